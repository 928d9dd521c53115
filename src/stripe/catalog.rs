//! The catalog: every product and price, archived ones included.

use std::collections::BTreeMap;

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
            let (products, _) = self.rest_of_list(&ListProduct::new().limit(PAGE), None).await?;
            Ok::<_, StripeError>(products.into_iter().map(|p| ProductRecord {
                id: p.id.as_str().to_owned(),
                name: p.name.replace('\0', ""),
                active: p.active,
                metadata: p.metadata.into_iter().collect::<BTreeMap<_, _>>(),
            }))
        };
        let prices = async {
            let (prices, _) = self.rest_of_list(&ListPrice::new().limit(PAGE), None).await?;
            Ok::<_, StripeError>(prices.into_iter().map(|p| PriceRecord {
                id: p.id.as_str().to_owned(),
                product: p.product.id().as_str().to_owned(),
                active: p.active,
                recurring: p.recurring.is_some(),
                metadata: p.metadata.into_iter().collect::<BTreeMap<_, _>>(),
                created: p.created,
            }))
        };
        let (products, prices) = futures::try_join!(products, prices)?;
        Ok((products.collect(), prices.collect()))
    }
}
