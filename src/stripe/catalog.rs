//! The catalog: every product and price.

use std::collections::BTreeMap;

use stripe_product::price::ListPrice;
use stripe_product::product::ListProduct;

use super::error::StripeError;
use super::source::{PAGE, StripeSource, next_cursor};
use crate::catalog::{PriceRecord, ProductRecord};

impl StripeSource {
    /// Every product and price, archived ones included (old subscriptions
    /// keep pointing at them), 100 per request.
    pub async fn catalog(&self) -> Result<(Vec<ProductRecord>, Vec<PriceRecord>), StripeError> {
        let mut products = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut request = ListProduct::new().limit(PAGE);
            if let Some(cursor) = &after {
                request = request.starting_after(cursor);
            }
            let list = self.fetch(&request).await?;
            after = next_cursor(&list, |p| p.id.as_str().to_owned());
            products.extend(list.data.into_iter().map(|p| ProductRecord {
                id: p.id.as_str().to_owned(),
                name: p.name.replace('\0', ""),
                active: p.active,
                metadata: p.metadata.into_iter().collect::<BTreeMap<_, _>>(),
            }));
            if after.is_none() {
                break;
            }
        }
        let mut prices = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut request = ListPrice::new().limit(PAGE);
            if let Some(cursor) = &after {
                request = request.starting_after(cursor);
            }
            let list = self.fetch(&request).await?;
            after = next_cursor(&list, |p| p.id.as_str().to_owned());
            prices.extend(list.data.into_iter().map(|p| PriceRecord {
                id: p.id.as_str().to_owned(),
                product: p.product.id().as_str().to_owned(),
                active: p.active,
                recurring: p.recurring.is_some(),
                metadata: p.metadata.into_iter().collect::<BTreeMap<_, _>>(),
                created: p.created,
            }));
            if after.is_none() {
                break;
            }
        }
        Ok((products, prices))
    }
}
