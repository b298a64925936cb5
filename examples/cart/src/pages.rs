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
    /// Where sessions live (`redis`, `memory`, ...), if the page says.
    pub store: Option<&'a str>,
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
body{font:16px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#f3f4f1;color:#1d2320}
.bar{background:#16392a;color:#fff}
.bar-in,main{max-width:60rem;margin:0 auto;padding:.7rem 1rem}
.bar-in{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:center;justify-content:space-between}
h1{font-size:1.25rem;margin:0;letter-spacing:.01em;line-height:1.2}
h1 small{display:block;font-weight:400;opacity:.75;font-size:.8rem;letter-spacing:0}
.pill{display:inline-flex;align-items:center;gap:.4rem;background:#ffffff1f;border-radius:2rem;padding:.2rem .75rem;font-size:.9rem;white-space:nowrap}
.dot{width:.7rem;height:.7rem;border-radius:50%;display:inline-block;flex:none;box-shadow:0 0 0 2px #ffffff55}
.count{background:#f2c14e;color:#1d2320;font-weight:700;border-radius:1rem;padding:0 .5rem;min-width:1.6rem;text-align:center}
main{display:grid;gap:1rem;grid-template-columns:1fr;padding-bottom:1.5rem}
@media (min-width:48rem){main{grid-template-columns:3fr 2fr;align-items:start}}
section{background:#fff;border-radius:.75rem;padding:.9rem 1.1rem;box-shadow:0 1px 3px #0000001a}
h2{font-size:1.05rem;margin:0 0 .6rem}
ul{list-style:none;margin:0;padding:0}
li{display:flex;align-items:center;justify-content:space-between;gap:.75rem;padding:.5rem 0;border-bottom:1px solid #eceeea}
li:last-child{border-bottom:0}
.name{flex:1}
.price{color:#59625d;font-variant-numeric:tabular-nums;margin-right:.25rem}
form{display:inline;margin:0}
button{font:inherit;font-size:.95rem;padding:.45rem .9rem;min-height:2.5rem;border:1px solid #c5cac6;border-radius:.5rem;background:#fafbf9;color:inherit;cursor:pointer}
button:hover{background:#eef1ed}
button.primary{background:#1f6f4a;border-color:#1f6f4a;color:#fff}
button.primary:hover{background:#185c3d}
button.danger{color:#9b2c2c;border-color:#e3b4b4}
button.small{min-width:2.5rem;padding:.3rem .6rem}
input[type=text]{font:inherit;padding:.45rem .6rem;min-height:2.5rem;border:1px solid #c5cac6;border-radius:.5rem;flex:1;min-width:8rem}
.muted{color:#59625d;font-size:.9rem}
.side,.col{display:grid;gap:1rem;align-content:start}
.about p{margin:.4rem 0;color:#3d4541}
.row{display:flex;flex-wrap:wrap;gap:.5rem;align-items:center}
.total{display:flex;justify-content:space-between;font-weight:700;padding-top:.6rem;margin-top:.2rem;border-top:2px solid #eceeea}
dl{display:grid;grid-template-columns:auto 1fr;gap:.3rem .9rem;margin:0}
dt{color:#59625d}
dd{margin:0;font-variant-numeric:tabular-nums;overflow-wrap:anywhere}
";

/// Distinct colours for instance badges.
const PALETTE: [&str; 8] = [
    "#4fc3f7", "#f06292", "#aed581", "#ffb74d", "#ba68c8", "#4db6ac", "#e57373", "#fff176",
];

/// A colour for an instance name, so a change of instance is visible at a
/// glance. Names ending in a number (`app-1`, `app-2`, ...) get distinct
/// colours in turn; others a stable colour from a hash of the name.
fn instance_colour(name: &str) -> &'static str {
    let digits: String = name
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let index = match digits.parse::<usize>() {
        Ok(n) => n.saturating_sub(1),
        // FNV-1a: stable across runs and builds, unlike the std hasher.
        Err(_) => name.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        }) as usize,
    };
    PALETTE[index % PALETTE.len()]
}

/// The whole page.
///
/// Stable hooks for tests and scripts: `#instance` (the serving instance),
/// `#count` (items in the cart), `#user` (the user's name, only when logged
/// in), `#login-state` (`logged-in` or `anonymous` in its `data-state`),
/// `#cart` (the cart's lines), `#remaining` (idle time left).
#[must_use]
pub fn render(view: &View<'_>) -> String {
    let items = count(&view.cart);
    let instance = escape(view.instance);
    let mut html = String::with_capacity(8192);
    let _ = write!(
        html,
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width,initial-scale=1\">\
         <link rel=icon href=\"data:,\">\
         <title>offstate cart ({items})</title><style>{STYLE}</style></head><body>\
         <header class=bar><div class=bar-in>\
         <h1>offstate shop<small>the cart survives instances</small></h1>\
         <div class=row>\
         <span class=pill title=\"The app instance that rendered this page\">\
         <span class=dot style=\"background:{colour}\"></span>served by <strong id=instance>{instance}</strong></span>\
         <span class=pill aria-label=\"Items in your cart\">cart <span id=count class=count>{items}</span> \
         item{s}</span></div></div></header><main>",
        colour = instance_colour(view.instance),
        s = if items == 1 { "" } else { "s" },
    );

    // The shop.
    html.push_str("<div class=col><section><h2>Shop</h2><ul id=shop>");
    for product in CATALOG {
        let _ = write!(
            html,
            "<li><span class=name>{name}</span><span class=price>{price}</span>\
             <form method=post action=/cart/add><input type=hidden name=item value=\"{id}\">\
             <button class=primary id=\"add-{id}\" aria-label=\"Add {name}\">Add</button></form></li>",
            name = escape(product.name),
            price = money(product.cents),
            id = escape(product.id),
        );
    }
    let _ = write!(
        html,
        "</ul></section><section class=about><h2>What is going on</h2>\
         <p>Each click goes through a load balancer to any of the app's instances; \
         the badge at the top names the one that drew this page.</p>\
         <p>Your cart and your login live in the shared session store{store}, not in the \
         instance: any instance can answer any click, and one can stop without losing a thing.</p>\
         <p>Logging in gives your session a new ID and keeps the cart. \
         <em>Log out everywhere</em> ends every session of your user, on every device.</p>\
         </section></div>",
        store = view
            .store
            .map(|s| format!(" ({})", escape(s)))
            .unwrap_or_default(),
    );

    // The cart and the account, side by side with the shop on a desktop.
    html.push_str("<div class=side><section><h2>Your cart</h2>");
    if view.cart.is_empty() {
        html.push_str("<p class=muted id=empty>Your cart is empty.</p>");
    } else {
        html.push_str("<ul id=cart>");
        for (id, quantity) in &view.cart {
            let name = product(id).map_or(id.as_str(), |p| p.name);
            let _ = write!(
                html,
                "<li data-item=\"{id}\" data-quantity={quantity}><span class=name>{quantity} × {name}</span>\
                 <form method=post action=/cart/remove><input type=hidden name=item value=\"{id}\">\
                 <button class=small id=\"remove-{id}\" aria-label=\"Remove one {name}\">−</button></form></li>",
                name = escape(name),
                id = escape(id),
            );
        }
        let _ = write!(
            html,
            "</ul><p class=total><span>Total</span><span id=total>{}</span></p>",
            money(total_cents(&view.cart))
        );
    }
    html.push_str("</section>");

    html.push_str("<section><h2>Account</h2>");
    match &view.user {
        Some(user) => {
            let _ = write!(
                html,
                "<p id=login-state data-state=logged-in>Logged in as <strong id=user>{}</strong>.</p>\
                 <div class=row>\
                 <form method=post action=/logout><button id=logout>Log out</button></form>\
                 <form method=post action=/logout-everywhere>\
                 <button class=danger id=logout-everywhere>Log out everywhere</button></form></div>",
                escape(user)
            );
        }
        None => html.push_str(
            "<p id=login-state data-state=anonymous>Not logged in. Your cart is kept when you log in.</p>\
             <form method=post action=/login class=row>\
             <input type=text id=login-name name=user placeholder=\"your name\" aria-label=\"Your name\" \
             required maxlength=64 autocomplete=username>\
             <button class=primary id=login>Log in</button></form>",
        ),
    }
    html.push_str("</section><section><h2>Session</h2><dl>");
    match view.remaining {
        Some(left) => {
            let _ = write!(
                html,
                "<dt>Idle time left</dt><dd><span id=remaining>{}</span></dd>",
                duration(left)
            );
        }
        None => html.push_str(
            "<dt>Idle time left</dt><dd>no session yet: it starts with your first click</dd>",
        ),
    }
    if let Some(store) = view.store {
        let _ = write!(
            html,
            "<dt>Stored in</dt><dd id=store>{}</dd>",
            escape(store)
        );
    }
    let _ = write!(
        html,
        "<dt>Page served by</dt><dd>{instance}</dd></dl></section></div></main></body></html>",
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

    #[test]
    fn instances_get_stable_distinct_colours() {
        assert_eq!(instance_colour("app-1"), instance_colour("app-1"));
        let colours: std::collections::BTreeSet<_> =
            ["app-1", "app-2", "app-3"].map(instance_colour).into();
        assert_eq!(colours.len(), 3);
        assert_eq!(instance_colour("x"), instance_colour("x"));
    }
}
