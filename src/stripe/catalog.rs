//! The catalog: every product and price, archived ones included.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use stripe_product::price::ListPrice;
use stripe_product::product::ListProduct;

use super::error::StripeError;
use super::source::{PAGE, StripeSource};
use crate::catalog::{PriceRecord, ProductRecord};

impl StripeSource {
    /// Every product and price, archived ones included (old subscriptions
    /// keep pointing at them), 100 per request. A product or price that
    /// does not decode is left out (logged): its grants find no terms and
    /// leave their licenses as they are.
    pub async fn catalog(&self) -> Result<(Vec<ProductRecord>, Vec<PriceRecord>), StripeError> {
        // Two lists, read side by side.
        let products = async {
            let mut products = Vec::new();
            let request = ListProduct::new().limit(PAGE);
            let mut pages = std::pin::pin!(self.pages(&request, None));
            while let Some(page) = pages.try_next().await? {
                products.extend(page.into_objects().map(|p| ProductRecord {
                    id: p.id.as_str().to_owned(),
                    name: p.name.replace('\0', ""),
                    active: p.active,
                    metadata: p.metadata.into_iter().collect::<BTreeMap<_, _>>(),
                }));
            }
            Ok::<_, StripeError>(products)
        };
        let prices = async {
            let mut prices = Vec::new();
            let request = ListPrice::new().limit(PAGE);
            let mut pages = std::pin::pin!(self.pages(&request, None));
            while let Some(page) = pages.try_next().await? {
                prices.extend(page.into_objects().map(|p| PriceRecord {
                    id: p.id.as_str().to_owned(),
                    product: p.product.id().as_str().to_owned(),
                    active: p.active,
                    recurring: p.recurring.is_some(),
                    metadata: p.metadata.into_iter().collect::<BTreeMap<_, _>>(),
                    created: p.created,
                }));
            }
            Ok::<_, StripeError>(prices)
        };
        futures::try_join!(products, prices)
    }
}
