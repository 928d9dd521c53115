//! The one path every Stripe list is read through: a page (`limit`,
//! `starting_after`) fetched through the transport and decoded into
//! async-stripe's type for its objects, and the stream of a list's pages
//! from a cursor to its end.
//!
//! A page's `data` is decoded object by object: an object async-stripe's
//! type cannot hold (a field outside it, such as a negative `quantity`)
//! skips only itself, logged with its id and the request, and the rest of
//! the page reads as usual. The caller learns what was skipped
//! ([`ListPage::skipped`]) and decides what that means for the facts it
//! reports (a subscription with a skipped item is not complete).

use futures::{Stream, TryStreamExt};
use stripe_client_core::StripeRequest;
use stripe_types::{AsCursorOpt, List, Object};

use super::error::StripeError;
use super::source::{Customers, Span, StripeSource};

/// An object of a page that async-stripe's type for it cannot hold.
#[derive(Debug)]
pub(super) struct Skipped {
    /// Its `id`, when it has one.
    pub id: Option<String>,
    /// The object as Stripe sent it, for the few fields a caller still
    /// needs from it (a session's `invoice`, an event's object).
    pub raw: serde_json::Value,
}

/// One page of a list, its objects in Stripe's order.
#[derive(Debug)]
pub(super) struct ListPage<T> {
    entries: Vec<Result<T, Skipped>>,
    has_more: bool,
}

impl<T: Object> ListPage<T> {
    /// Objects Stripe listed on the page, skipped ones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The `starting_after` cursor of the next page (the last object's id,
    /// read or skipped); `None` on the last page.
    pub fn next(&self) -> Option<String> {
        if !self.has_more {
            return None;
        }
        match self.entries.last()? {
            Ok(object) => object.id().as_cursor_opt().map(str::to_owned),
            Err(skipped) => skipped.id.clone(),
        }
    }

    /// The page's place in its list, by each object's `created` (`date`
    /// for invoice items); a skipped object's is read from what Stripe sent.
    pub fn span(&self, created: impl Fn(&T) -> i64) -> Span {
        let created = |entry: &Result<T, Skipped>| match entry {
            Ok(object) => Some(created(object)),
            Err(skipped) => ["created", "date"].iter().find_map(|f| skipped.raw[f].as_i64()),
        };
        Span {
            newest: self.entries.first().and_then(created),
            oldest: self.entries.last().and_then(created),
            listed: self.entries.len(),
        }
    }

    /// The objects read, in order.
    pub fn objects(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().filter_map(|e| e.as_ref().ok())
    }

    pub fn skipped(&self) -> impl Iterator<Item = &Skipped> {
        self.entries.iter().filter_map(|e| e.as_ref().err())
    }

    pub fn into_objects(self) -> impl Iterator<Item = T> {
        self.entries.into_iter().filter_map(Result::ok)
    }

    /// Every object in order: read, or skipped.
    pub fn into_entries(self) -> impl Iterator<Item = Result<T, Skipped>> {
        self.entries.into_iter()
    }
}

/// Appends `starting_after` to a list request's query.
fn starting_after(query: Option<String>, cursor: &str) -> String {
    let cursor: String = url::form_urlencoded::byte_serialize(cursor.as_bytes()).collect();
    match query.filter(|q| !q.is_empty()) {
        Some(query) => format!("{query}&starting_after={cursor}"),
        None => format!("starting_after={cursor}"),
    }
}

/// Decodes a list answer. The whole page is decoded at once first (the
/// common case, and the only one when `whole`); if that fails, each object
/// of `data` on its own, skipping the ones that do not fit.
fn decode<T>(body: &[u8], path: &str, whole: bool) -> Result<ListPage<T>, StripeError>
where
    T: Object + miniserde::Deserialize,
    List<T>: miniserde::Deserialize,
{
    let fail = |message: String| StripeError::Decode {
        path: path.to_owned(),
        message,
    };
    let text = std::str::from_utf8(body).map_err(|_| fail("Response was not valid UTF-8".into()))?;
    let type_name = std::any::type_name::<T>();
    match miniserde::json::from_str::<List<T>>(text) {
        Ok(list) => {
            return Ok(ListPage {
                entries: list.data.into_iter().map(Ok).collect(),
                has_more: list.has_more,
            });
        }
        Err(_) if whole => {
            return Err(fail(format!(
                "error deserializing request data (expected async-stripe's List<{type_name}>)"
            )));
        }
        Err(_) => {}
    }
    #[derive(serde::Deserialize)]
    struct RawList {
        data: Vec<serde_json::Value>,
        has_more: bool,
    }
    let raw: RawList = serde_json::from_str(text).map_err(|e| fail(format!("not a Stripe list: {e}")))?;
    let entries = raw
        .data
        .into_iter()
        .map(|raw| {
            miniserde::json::from_str::<T>(&raw.to_string()).map_err(|_| {
                let id = raw["id"].as_str().map(str::to_owned);
                tracing::warn!(
                    object = id.as_deref().unwrap_or("(no id)"),
                    %path,
                    "Stripe object does not fit async-stripe's {type_name}: skipped, the rest of its page is read"
                );
                Skipped { id, raw }
            })
        })
        .collect();
    Ok(ListPage {
        entries,
        has_more: raw.has_more,
    })
}

impl StripeSource {
    /// One page of a list whose objects name a customer, read with the
    /// customers (see `StripeSource::fetch_with_customers`); only the answer without the
    /// customer expansion skips objects that do not decode.
    pub(super) async fn page_with_customers<R, T>(
        &self,
        request: impl Fn(bool) -> R,
        after: Option<&str>,
        customer_id: impl Fn(&T) -> Option<String>,
    ) -> Result<(ListPage<T>, Customers), StripeError>
    where
        R: StripeRequest<Output = List<T>>,
        T: Object + miniserde::Deserialize,
        List<T>: miniserde::Deserialize,
    {
        let read = |with_customer| {
            let request = request(with_customer);
            async move { self.page(&request, after, with_customer).await }
        };
        let ids = |page: &ListPage<T>| page.objects().filter_map(&customer_id).collect();
        self.fetch_with_customers(read, ids).await
    }

    /// One page of the list `request` asks for, from `after`. With `whole`,
    /// an object that does not decode fails the page (see
    /// `fetch_with_customers`); without, it skips only itself.
    pub(super) async fn page<R, T>(
        &self,
        request: &R,
        after: Option<&str>,
        whole: bool,
    ) -> Result<ListPage<T>, StripeError>
    where
        R: StripeRequest<Output = List<T>>,
        T: Object + miniserde::Deserialize,
        List<T>: miniserde::Deserialize,
    {
        let mut builder = request.build();
        if let Some(cursor) = after {
            builder.query = Some(starting_after(builder.query.take(), cursor));
        }
        let path = format!("/v1{}", builder.path);
        let body = self.transport.send(&builder, None, None, None).await?;
        decode(&body, &path, whole)
    }

    /// Every page of the list `request` asks for, from `after` (the start
    /// when `None`) to its end.
    pub(super) fn pages<'a, R, T>(
        &'a self,
        request: &'a R,
        after: Option<String>,
    ) -> impl Stream<Item = Result<ListPage<T>, StripeError>> + 'a
    where
        R: StripeRequest<Output = List<T>>,
        T: Object + miniserde::Deserialize + 'a,
        List<T>: miniserde::Deserialize,
    {
        // The state is the cursor of the page to read: `None` once the last
        // page was read.
        futures::stream::try_unfold(Some(after), move |cursor| async move {
            let Some(after) = cursor else {
                return Ok(None);
            };
            let page = self.page(request, after.as_deref(), false).await?;
            let next = page.next().map(Some);
            Ok(Some((page, next)))
        })
    }

    /// Every object of the list `request` names after `after` (from its
    /// start with `None`), page after page, and how many objects those
    /// pages held, the ones that did not decode (left out, logged) included.
    pub(super) async fn rest_of_list<R, T>(
        &self,
        request: &R,
        after: Option<String>,
    ) -> Result<(Vec<T>, usize), StripeError>
    where
        R: StripeRequest<Output = List<T>>,
        T: Object + miniserde::Deserialize,
        List<T>: miniserde::Deserialize,
    {
        let (mut objects, mut held) = (Vec::new(), 0);
        let mut pages = std::pin::pin!(self.pages(request, after));
        while let Some(page) = pages.try_next().await? {
            held += page.len();
            objects.extend(page.into_objects());
        }
        Ok((objects, held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_is_appended_to_the_query() {
        assert_eq!(
            starting_after(Some("limit=100".into()), "sub_1"),
            "limit=100&starting_after=sub_1"
        );
        assert_eq!(starting_after(None, "sub_1"), "starting_after=sub_1");
        assert_eq!(starting_after(Some(String::new()), "a b"), "starting_after=a+b");
    }

    /// A page whose second object does not fit async-stripe's type.
    const BENT: &str = r#"{"object":"list","url":"/v1/customers","has_more":true,"data":[
        {"id":"cus_1","object":"customer","deleted":true,"created":9},
        {"id":"cus_2","object":"customer","deleted":"perhaps","created":7}]}"#;

    #[test]
    fn an_object_that_does_not_decode_skips_only_itself_and_still_moves_the_cursor() {
        let page = decode::<stripe_shared::DeletedCustomer>(BENT.as_bytes(), "/v1/customers", false).unwrap();
        let read: Vec<_> = page.objects().map(|c| c.id.as_str().to_owned()).collect();
        assert_eq!(read, ["cus_1"]);
        let skipped: Vec<_> = page.skipped().map(|s| s.id.clone()).collect();
        assert_eq!(skipped, [Some("cus_2".to_owned())]);
        assert_eq!(
            page.next().as_deref(),
            Some("cus_2"),
            "the next page starts after the skipped object"
        );
        let span = page.span(|_| 9);
        assert_eq!((span.newest, span.oldest, span.listed), (Some(9), Some(7), 2));
    }

    #[test]
    fn read_whole_an_object_that_does_not_decode_fails_the_page_naming_the_request() {
        let err = decode::<stripe_shared::DeletedCustomer>(BENT.as_bytes(), "/v1/customers", true).unwrap_err();
        assert!(matches!(err, StripeError::Decode { .. }), "{err:?}");
        assert!(err.to_string().contains("/v1/customers"), "{err}");
    }
}
