//! The cart: what can be bought, and the pure functions that change a cart.
//!
//! The functions are pure because `Session::update` may run them again on a
//! fresher cart when two requests add items at the same moment; that is
//! what keeps concurrent adds from being lost.

use std::collections::BTreeMap;

/// The session key the cart is stored under.
pub const CART_KEY: &str = "cart";

/// Most of one item a cart holds.
pub const MAX_QUANTITY: u32 = 99;

/// One thing the shop sells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Product {
    /// Stable identifier, used in forms and in the cart.
    pub id: &'static str,
    /// What the page shows.
    pub name: &'static str,
    /// Price in cents.
    pub cents: u32,
}

/// Everything the shop sells.
pub const CATALOG: &[Product] = &[
    Product {
        id: "apple",
        name: "Apple",
        cents: 45,
    },
    Product {
        id: "pear",
        name: "Pear",
        cents: 60,
    },
    Product {
        id: "bread",
        name: "Sourdough bread",
        cents: 420,
    },
    Product {
        id: "cheese",
        name: "Comté, 200 g",
        cents: 690,
    },
    Product {
        id: "coffee",
        name: "Coffee beans, 250 g",
        cents: 850,
    },
    Product {
        id: "tea",
        name: "Green tea",
        cents: 380,
    },
];

/// The product with this id.
#[must_use]
pub fn product(id: &str) -> Option<&'static Product> {
    CATALOG.iter().find(|p| p.id == id)
}

/// Item id to quantity.
pub type Cart = BTreeMap<String, u32>;

/// The cart with one more `item` (up to [`MAX_QUANTITY`]).
#[must_use]
pub fn add(cart: Option<Cart>, item: &str) -> Option<Cart> {
    let mut cart = cart.unwrap_or_default();
    let quantity = cart.entry(item.to_owned()).or_insert(0);
    *quantity = (*quantity + 1).min(MAX_QUANTITY);
    Some(cart)
}

/// The cart with one `item` fewer; `None` (the key is removed) once empty.
#[must_use]
pub fn remove(cart: Option<Cart>, item: &str) -> Option<Cart> {
    let mut cart = cart?;
    if let Some(quantity) = cart.get_mut(item) {
        *quantity = quantity.saturating_sub(1);
        if *quantity == 0 {
            cart.remove(item);
        }
    }
    (!cart.is_empty()).then_some(cart)
}

/// How many items the cart holds.
#[must_use]
pub fn count(cart: &Cart) -> u32 {
    cart.values().sum()
}

/// The cart's total, in cents (unknown items count for nothing).
#[must_use]
pub fn total_cents(cart: &Cart) -> u32 {
    cart.iter()
        .filter_map(|(id, n)| product(id).map(|p| p.cents * n))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_remove() {
        let cart = add(add(None, "apple"), "apple");
        assert_eq!(cart.as_ref().map(count), Some(2));
        let cart = remove(cart, "apple");
        assert_eq!(cart.as_ref().map(count), Some(1));
        assert_eq!(remove(cart, "apple"), None);
        assert_eq!(remove(None, "apple"), None);
        let mut full = None;
        for _ in 0..200 {
            full = add(full, "tea");
        }
        assert_eq!(full.as_ref().map(count), Some(MAX_QUANTITY));
        assert_eq!(full.as_ref().map(total_cents), Some(380 * MAX_QUANTITY));
    }
}
