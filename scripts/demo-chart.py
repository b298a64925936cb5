#!/usr/bin/env python3
"""The demo's "kill an instance" moment as a chart: docs/demo-kill.svg.

    python3 scripts/demo-chart.py [--out docs/demo-kill.svg]

Starts `scripts/demo.sh --instances 2` (Redis, two cart instances behind
nginx) as a child, and drives a scripted shopper through nginx with a
cookie jar: an add (the form post, then the page it redirects to) and a
look at /api/cart every STEP seconds, a login partway. At KILL_AT it kills
app-1 by the PID demo.sh printed and keeps shopping (the cart must keep
growing); at REDIS_STOP_AT it stops the Redis server by its PID (the app
fails closed); at END it sends SIGTERM to demo.sh, which stops the rest.
Meanwhile both instances' /metrics are scraped every SCRAPE seconds.

Python 3 standard library only; it talks to loopback only and stops only
the processes it started or demo.sh printed, by PID.
"""

import argparse
import http.cookiejar
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The script, in seconds from the first request.
STEP = 0.3
LOGIN_AT = 4.0
KILL_AT = 8.0
REDIS_STOP_AT = 16.0
END = 24.0  # past nginx's fail_timeout (5 s), so it asks app-2 again
SCRAPE = 0.25
ITEMS = ["apple", "pear"]


# --- the demo ------------------------------------------------------------------


class Demo:
    """demo.sh as a child process, and what it printed."""

    def __init__(self):
        env = dict(os.environ)
        # demo.sh builds the cart first: gently, on a shared machine.
        env.setdefault("CARGO_INCREMENTAL", "0")
        env.setdefault("CARGO_BUILD_JOBS", "1")
        self.proc = subprocess.Popen(
            [os.path.join(ROOT, "scripts", "demo.sh"), "--instances", "2", "--backend", "redis"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.url = None
        self.instances = {}  # name -> {"pid": int, "metrics": url}
        self.store_pids = []
        self.ready = threading.Event()
        self.log = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        # Reads everything demo.sh prints, so its pipe never fills.
        for line in self.proc.stdout:
            self.log.append(line.rstrip("\n"))
            m = re.search(r"open\s+(http://127\.0\.0\.1:\d+)/", line)
            if m:
                self.url = m.group(1)
            m = re.search(r"store server pid\(s\):\s+([\d ]+)$", line.strip())
            if m:
                self.store_pids = [int(p) for p in m.group(1).split()]
            m = re.search(r"(app-\d+)\s+http://\S+\s+pid\s+(\d+)\s+metrics\s+(\S+)", line)
            if m:
                self.instances[m.group(1)] = {"pid": int(m.group(2)), "metrics": m.group(3)}
            if line.strip().startswith("Metrics (Prometheus"):
                self.ready.set()
        self.ready.set()

    def wait_up(self, timeout):
        if not self.ready.wait(timeout) or self.proc.poll() is not None:
            raise SystemExit("demo.sh did not come up:\n" + "\n".join(self.log[-20:]))
        if not (self.url and len(self.instances) == 2 and len(self.store_pids) == 1):
            raise SystemExit("could not read demo.sh's output:\n" + "\n".join(self.log))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                print("demo.sh did not stop within 15 s; pid", self.proc.pid, file=sys.stderr)


def stop_pid(pid, what):
    """SIGTERM to one PID we were given, then wait for it to be gone."""
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # A child of demo.sh lingers as a zombie until demo.sh reaps it.
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    raise SystemExit(f"{what} (pid {pid}) did not stop")


# --- the metrics -----------------------------------------------------------------

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text format: [(name, {label: value}, value)]."""
    out = []
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            out.append((m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def telling(samples):
    """The few counters the chart shows, from one scrape."""

    def total(name, **want):
        return sum(v for n, labels, v in samples
                   if n == name and all(labels.get(k) == w for k, w in want.items()))

    return {
        "ok": total("offstate_store_calls_total", outcome="ok"),
        "unavailable": total("offstate_store_calls_total", outcome="unavailable"),
        "outage": total("offstate_outage_decisions_total"),
    }


class Scraper(threading.Thread):
    """Scrapes every instance's /metrics every SCRAPE seconds."""

    def __init__(self, instances, t0):
        super().__init__(daemon=True)
        self.instances = instances
        self.t0 = t0
        self.series = {name: [] for name in instances}  # name -> [(t, {counter: value})]
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            t = time.monotonic() - self.t0
            for name, inst in self.instances.items():
                try:
                    with urllib.request.urlopen(inst["metrics"], timeout=0.5) as r:
                        self.series[name].append((t, telling(parse_metrics(r.read().decode()))))
                except (urllib.error.URLError, OSError):
                    pass  # a dead instance has no metrics: its line ends
            self.halt.wait(max(0.0, SCRAPE - (time.monotonic() - self.t0 - t)))


# --- the shopper -------------------------------------------------------------------


class Shopper:
    """One browser: a cookie jar, and a record of every request."""

    def __init__(self, base, t0):
        self.base = base
        self.t0 = t0
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.requests = []  # (t, label, status)
        self.carts = []  # (t, count)

    def request(self, label, path, form=None):
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        t = time.monotonic() - self.t0
        try:
            with self.opener.open(self.base + path, data=data, timeout=10) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        self.requests.append((t, label, status))
        return status, body

    def add(self, item):
        # The form post answers 303 to "/", which urllib follows: a page view.
        return self.request("add " + item, "/cart/add", {"item": item})[0]

    def login(self, user):
        return self.request("login", "/login", {"user": user})[0]

    def cart(self):
        status, body = self.request("cart", "/api/cart")
        if status != 200:
            return None
        cart = json.loads(body)
        self.carts.append((time.monotonic() - self.t0, cart["count"]))
        return cart


# --- the chart ----------------------------------------------------------------------

W, H = 800, 560
LEFT, RIGHT = 62, 772
TOP_PANEL = (52, 250)  # y of top and bottom
LOW_PANEL = (300, 470)
STRIP = (500, 516)
COLORS = {
    "app-1": "#1f77b4",
    "app-2": "#ff7f0e",
    "cart": "#2ca02c",
    "unavailable": "#d62728",
    "outage": "#9467bd",
}


def esc(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def nice_max(v):
    for m in (5, 10, 20, 25, 50, 100, 150, 200, 250, 300, 400, 500, 750, 1000, 1500, 2000):
        if v <= m:
            return m
    return v


def svg_chart(scraper, shopper, killed_at, stopped_at, end):
    # Up to the last scrape, which comes a little after the last request.
    x_max = max([end, 1.0] + [t for pts in scraper.series.values() for t, _ in pts])

    def x(t):
        return LEFT + (RIGHT - LEFT) * t / x_max

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">'
        "Two cart instances on one Redis behind nginx: kill app-1, then stop Redis</text>",
    ]

    # The two moments, under everything else.
    for t, label in ((killed_at, "app-1 killed"), (stopped_at, "Redis stopped")):
        out.append(f'<line x1="{x(t):.1f}" y1="{TOP_PANEL[0]}" x2="{x(t):.1f}" '
                   f'y2="{STRIP[1]}" stroke="#333" stroke-dasharray="6,4"/>')
        out.append(f'<text x="{x(t) + 4:.1f}" y="{TOP_PANEL[0] + 10}" fill="#333" '
                   f'font-weight="bold">{label}</text>')

    def polyline(points, y0, y1, y_top, color, dash):
        if not points:
            return
        path = " ".join(f"{x(t):.1f},{y1 - (y1 - y0) * v / y_top:.1f}" for t, v in points)
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                   f'stroke-width="2"{extra}/>')

    def panel(y0, y1, title, y_top, lines, legend, legend_at, right=None):
        # Axes, grid, title, the lines (each a list of (t, v)), a legend;
        # `right` is (y_top, color, lines) for a second scale on the right.
        out.append(f'<text x="{LEFT}" y="{y0 - 8}" font-weight="bold">{esc(title)}</text>')
        for i in range(6):
            v = y_top * i / 5
            y = y1 - (y1 - y0) * i / 5
            out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{RIGHT}" y2="{y:.1f}" stroke="#e5e5e5"/>')
            out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
        out.append(f'<line x1="{LEFT}" y1="{y0}" x2="{LEFT}" y2="{y1}" stroke="black"/>')
        out.append(f'<line x1="{LEFT}" y1="{y1}" x2="{RIGHT}" y2="{y1}" stroke="black"/>')
        for color, points, dash in lines:
            polyline(points, y0, y1, y_top, color, dash)
        if right:
            r_top, r_color, r_lines = right
            out.append(f'<line x1="{RIGHT}" y1="{y0}" x2="{RIGHT}" y2="{y1}" stroke="{r_color}"/>')
            for i in range(6):
                y = y1 - (y1 - y0) * i / 5
                out.append(f'<text x="{RIGHT + 4}" y="{y + 4:.1f}" fill="{r_color}">'
                           f'{r_top * i / 5:g}</text>')
            for color, points, dash in r_lines:
                polyline(points, y0, y1, r_top, color, dash)
        lx, ly = legend_at
        width = 36 + 6.1 * max(len(label) for _, label, _ in legend)
        out.append(f'<rect x="{lx - 6}" y="{ly - 10}" width="{width:.0f}" '
                   f'height="{16 * len(legend) + 4}" fill="white" fill-opacity="0.9"/>')
        for color, label, dash in legend:
            extra = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 24}" y2="{ly}" '
                       f'stroke="{color}" stroke-width="2"{extra}/>')
            out.append(f'<text x="{lx + 30}" y="{ly + 4}">{esc(label)}</text>')
            ly += 16

    # Top: work done per instance.
    ok = {name: [(t, s["ok"]) for t, s in pts] for name, pts in scraper.series.items()}
    top_max = nice_max(max([v for pts in ok.values() for _, v in pts] + [1]))
    panel(*TOP_PANEL, "Store calls answered ok, per instance (cumulative, scraped every 250 ms)",
          top_max,
          [(COLORS[n], ok[n], None) for n in sorted(ok)],
          [(COLORS[n], f"{n}: offstate_store_calls_total{{outcome=\"ok\"}}", None)
           for n in sorted(ok)],
          (430, TOP_PANEL[1] - 40))

    # Bottom: the shopper's cart and the outage counters (summed over instances alive).
    def summed(key):
        pts = []
        for t, s in scraper.series["app-2"]:
            v = s[key]
            prior = [p for p in scraper.series["app-1"] if p[0] <= t]
            if prior:
                v += prior[-1][1][key]
            pts.append((t, v))
        return pts

    unavailable, outage = summed("unavailable"), summed("outage")
    cart = shopper.carts
    low_max = nice_max(max([v for _, v in cart] + [1]))
    outage_max = nice_max(max([v for _, v in unavailable + outage] + [1]))
    panel(*LOW_PANEL, "The shopper's cart (left scale), and the store outage as the instances "
          "see it (right scale)", low_max,
          [(COLORS["cart"], cart, None)],
          [(COLORS["cart"], "items in the cart (GET /api/cart through nginx)", None),
           (COLORS["unavailable"], 'offstate_store_calls_total{outcome="unavailable"}', None),
           (COLORS["outage"], "offstate_outage_decisions_total (fail closed)", "5,3")],
          (LEFT + 12, LOW_PANEL[0] + 6),
          (outage_max, COLORS["unavailable"],
           [(COLORS["unavailable"], unavailable, None),
            (COLORS["outage"], outage, "5,3")]))

    # A strip: the HTTP status of every request the shopper made.
    y0, y1 = STRIP
    out.append(f'<text x="{LEFT - 6}" y="{y1 - 3}" text-anchor="end">HTTP</text>')
    for t, _, status in shopper.requests:
        color = "#2ca02c" if status < 400 else "#d62728"
        out.append(f'<line x1="{x(t):.1f}" y1="{y0}" x2="{x(t):.1f}" y2="{y1}" '
                   f'stroke="{color}" stroke-width="2"/>')
    codes = sorted({s for _, _, s in shopper.requests})
    out.append(f'<text x="{LEFT}" y="{y0 - 6}" fill="#555">'
               f'status of each shopper request: green &lt; 400, red otherwise '
               f'(seen: {", ".join(map(str, codes))})</text>')

    # The time axis.
    for s in range(0, int(x_max) + 1, 2):
        out.append(f'<line x1="{x(s):.1f}" y1="{STRIP[1]}" x2="{x(s):.1f}" y2="{STRIP[1] + 4}" '
                   'stroke="black"/>')
        out.append(f'<text x="{x(s):.1f}" y="{STRIP[1] + 28}" text-anchor="middle">{s}</text>')
    out.append(f'<text x="{(LEFT + RIGHT) / 2}" y="{H - 6}" text-anchor="middle">'
               "seconds since the first request</text>")

    out.append("</svg>")
    return "\n".join(out) + "\n"


# --- the run --------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "demo-kill.svg"))
    args = ap.parse_args()

    demo = Demo()
    try:
        demo.wait_up(timeout=900)  # includes building the cart
        print(f"demo up: {demo.url}; " + ", ".join(
            f"{n} pid {i['pid']}" for n, i in sorted(demo.instances.items()))
            + f"; redis pid {demo.store_pids[0]}")
        t0 = time.monotonic()
        scraper = Scraper(demo.instances, t0)
        shopper = Shopper(demo.url, t0)
        scraper.start()

        adds = 0
        at_kill = at_stop = None
        logged_in = False
        killed_at = stopped_at = None
        step = 0
        while True:
            now = time.monotonic() - t0
            if now >= END:
                break
            if not logged_in and now >= LOGIN_AT:
                status = shopper.login("alice")
                assert status == 200, f"login answered {status}"
                logged_in = True
            if killed_at is None and now >= KILL_AT:
                at_kill = shopper.carts[-1][1]
                stop_pid(demo.instances["app-1"]["pid"], "app-1")
                killed_at = time.monotonic() - t0
                print(f"{killed_at:5.1f} s  killed app-1 (pid {demo.instances['app-1']['pid']}); "
                      f"cart has {at_kill} items")
            if stopped_at is None and now >= REDIS_STOP_AT:
                at_stop = shopper.carts[-1][1]
                stop_pid(demo.store_pids[0], "redis-server")
                stopped_at = time.monotonic() - t0
                print(f"{stopped_at:5.1f} s  stopped Redis (pid {demo.store_pids[0]}); "
                      f"cart has {at_stop} items")

            status = shopper.add(ITEMS[step % len(ITEMS)])
            cart = shopper.cart()
            if stopped_at is None:
                assert status == 200, f"add answered {status} at {now:.1f} s"
                adds += 1
                assert cart is not None and cart["count"] == adds, \
                    f"cart has {cart and cart['count']} items after {adds} adds"
                if logged_in:
                    assert cart["user"] == "alice", f"logged out? {cart}"
            else:
                assert status >= 500 and cart is None, \
                    f"with Redis stopped, add answered {status} and the cart {cart}"
            step += 1
            time.sleep(max(0.0, STEP - (time.monotonic() - t0 - now)))

        end = time.monotonic() - t0
        time.sleep(SCRAPE * 2)  # one more scrape after the last request
        scraper.halt.set()
        scraper.join()
    finally:
        demo.stop()

    assert at_stop > at_kill, "the cart did not grow after app-1 was killed"
    with open(args.out, "w") as f:
        f.write(svg_chart(scraper, shopper, killed_at, stopped_at, end))

    def last(name, key, before=None):
        pts = [s for t, s in scraper.series[name] if before is None or t <= before]
        return int(pts[-1][key]) if pts else 0

    statuses = {}
    for t, _, status in shopper.requests:
        phase = "up" if t < killed_at else ("app-1 killed" if t < stopped_at else "Redis stopped")
        statuses.setdefault(phase, {}).setdefault(status, 0)
        statuses[phase][status] += 1
    print(f"wrote {os.path.relpath(args.out, ROOT)}")
    print(f"requests: {len(shopper.requests)}; status by phase: "
          + "; ".join(f"{p}: {dict(sorted(s.items()))}" for p, s in statuses.items()))
    print(f"cart: {at_kill} items when app-1 was killed, {at_stop} when Redis stopped "
          f"(the shopper was alice from {LOGIN_AT:g} s)")
    print(f"store calls ok: app-1 {last('app-1', 'ok')} (until killed), "
          f"app-2 {last('app-2', 'ok', killed_at)} before the kill, "
          f"{last('app-2', 'ok')} at the end")
    print(f"after Redis stopped, app-2: {last('app-2', 'unavailable')} unavailable store calls, "
          f"{last('app-2', 'outage')} outage decisions (fail closed)")


if __name__ == "__main__":
    main()
