//! Server-rendered HTML: one page, plain forms that POST and redirect, and
//! a little inline CSS that reads well on a phone and on a desktop.

use std::fmt::Write as _;
use std::time::Duration;

use crate::cart::{CATALOG, Cart, count, product, total_cents};

/// What the page shows.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct View<'a> {
    /// The cart.
    pub cart: Cart,
    /// Who is logged in.
    pub user: Option<String>,
    /// How long until the session ends without activity (`None`: no session).
    pub remaining: Option<Duration>,
    /// The instance that served the page.
    pub instance: &'a str,
}

/// Escapes text for HTML content and attribute values.
#[must_use]
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn money(cents: u32) -> String {
    format!("€{}.{:02}", cents / 100, cents % 100)
}

fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 {
        format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60)
    } else {
        format!("{}m {:02}s", secs / 60, secs % 60)
    }
}

const STYLE: &str = "
*{box-sizing:border-box}
body{font:16px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f6f6f3;color:#222}
header,main,footer{max-width:48rem;margin:0 auto;padding:.75rem 1rem}
header{display:flex;flex-wrap:wrap;gap:.5rem;align-items:center;justify-content:space-between}
h1{font-size:1.3rem;margin:0}
section{background:#fff;border-radius:.6rem;padding:.75rem 1rem;margin:.75rem 0;box-shadow:0 1px 2px #0001}
h2{font-size:1.05rem;margin:.2rem 0 .6rem}
ul{list-style:none;margin:0;padding:0}
li{display:flex;align-items:center;justify-content:space-between;gap:.5rem;padding:.35rem 0;border-bottom:1px solid #eee}
li:last-child{border-bottom:0}
form{display:inline;margin:0}
button{font:inherit;padding:.35rem .8rem;border:1px solid #bbb;border-radius:.4rem;background:#fafafa;cursor:pointer}
button.primary{background:#1f6f4a;border-color:#1f6f4a;color:#fff}
input[type=text]{font:inherit;padding:.35rem .5rem;border:1px solid #bbb;border-radius:.4rem;max-width:12rem}
.muted{color:#666;font-size:.9rem}
.badge{background:#1f6f4a;color:#fff;border-radius:1rem;padding:.1rem .6rem;font-size:.9rem}
.row{display:flex;flex-wrap:wrap;gap:.5rem;align-items:center}
";

/// The whole page.
#[must_use]
pub fn render(view: &View<'_>) -> String {
    let items = count(&view.cart);
    let mut html = String::with_capacity(4096);
    let _ = write!(
        html,
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width,initial-scale=1\">\
         <title>offstate cart ({items})</title><style>{STYLE}</style></head><body>\
         <header><h1>offstate shop</h1><span class=badge>cart: {items} item{s}</span></header><main>",
        s = if items == 1 { "" } else { "s" },
    );

    // Who is logged in.
    html.push_str("<section><h2>Account</h2>");
    match &view.user {
        Some(user) => {
            let _ = write!(
                html,
                "<p>Logged in as <strong id=user>{}</strong>.</p><div class=row>\
                 <form method=post action=/logout><button>Log out</button></form>\
                 <form method=post action=/logout-everywhere><button>Log out everywhere</button></form></div>",
                escape(user)
            );
        }
        None => html.push_str(
            "<p>Not logged in.</p><form method=post action=/login class=row>\
             <input type=text name=user placeholder=\"your name\" required maxlength=64 autocomplete=username>\
             <button class=primary>Log in</button></form>",
        ),
    }
    html.push_str("</section>");

    // The cart.
    html.push_str("<section><h2>Your cart</h2>");
    if view.cart.is_empty() {
        html.push_str("<p class=muted id=empty>Your cart is empty.</p>");
    } else {
        html.push_str("<ul id=cart>");
        for (id, quantity) in &view.cart {
            let name = product(id).map_or(id.as_str(), |p| p.name);
            let _ = write!(
                html,
                "<li><span>{quantity} × {name}</span>\
                 <form method=post action=/cart/remove><input type=hidden name=item value=\"{id}\">\
                 <button aria-label=\"Remove one {name}\">−</button></form></li>",
                name = escape(name),
                id = escape(id),
            );
        }
        let _ = write!(
            html,
            "</ul><p><strong>Total: {}</strong></p>",
            money(total_cents(&view.cart))
        );
    }
    html.push_str("</section>");

    // The shop.
    html.push_str("<section><h2>Shop</h2><ul>");
    for product in CATALOG {
        let _ = write!(
            html,
            "<li><span>{name} <span class=muted>{price}</span></span>\
             <form method=post action=/cart/add><input type=hidden name=item value=\"{id}\">\
             <button class=primary>Add</button></form></li>",
            name = escape(product.name),
            price = money(product.cents),
            id = escape(product.id),
        );
    }
    html.push_str("</ul></section></main><footer class=muted>");
    match view.remaining {
        Some(left) => {
            let _ = write!(
                html,
                "<p>Session ends after <span id=remaining>{}</span> without activity.</p>",
                duration(left)
            );
        }
        None => html.push_str("<p>No session yet: it starts with your first click.</p>"),
    }
    let _ = write!(
        html,
        "<p>Served by instance <strong id=instance>{}</strong>.</p></footer></body></html>",
        escape(view.instance)
    );
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_users_type() {
        let view = View {
            user: Some("<script>alert('x')</script>".into()),
            instance: "a&b",
            ..View::default()
        };
        let html = render(&view);
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)"));
        assert!(html.contains("a&amp;b"));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(Duration::from_secs(29 * 60 + 5)), "29m 05s");
        assert_eq!(duration(Duration::from_secs(3 * 3600 + 60)), "3h 01m");
    }
}
