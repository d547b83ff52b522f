//! The status page at `/`: one self-contained HTML document (no external assets, no build step)
//! that polls `/stats` and draws the hit ratio per minute over the last hour, the tier split,
//! upstream errors, the busiest and slowest upstream hosts, and the images rescued from web
//! archives.

use http::{Response, StatusCode};

use super::respond::{self, Body};

/// The page; its script reads `/stats` relative to the page, so it works behind a path prefix.
const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>imgmirror status</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.4rem; margin-bottom: .2rem; }
  .muted { color: #666; font-size: .9rem; }
  .cards { display: flex; flex-wrap: wrap; gap: 1rem; margin: 1rem 0; }
  .card { border: 1px solid #ddd; border-radius: 6px; padding: .7rem 1rem; min-width: 9rem; }
  .card b { display: block; font-size: 1.6rem; }
  svg { width: 100%; height: 220px; border: 1px solid #ddd; border-radius: 6px; background: #fafafa; }
  .bar { display: flex; height: 1.4rem; border-radius: 4px; overflow: hidden; border: 1px solid #ddd; }
  .bar div { height: 100%; }
  table { border-collapse: collapse; width: 100%; margin-top: .5rem; }
  td, th { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #eee; }
  td.n, th.n { text-align: right; }
  .axis { display: flex; justify-content: space-between; }
  .legend span { display: inline-block; width: .8rem; height: .8rem; margin: 0 .3rem 0 1rem; vertical-align: middle; }
</style>
</head>
<body>
<h1>imgmirror</h1>
<div class="muted" id="updated">loading…</div>
<div class="cards">
  <div class="card">hit ratio<b id="ratio">–</b><span class="muted" id="windows"></span></div>
  <div class="card">hits<b id="hits">–</b></div>
  <div class="card">misses<b id="misses">–</b></div>
  <div class="card">stale served<b id="stale">–</b></div>
  <div class="card">upstream errors<b id="errors">–</b><span class="muted" id="fetches"></span></div>
  <div class="card">uptime<b id="uptime">–</b></div>
</div>
<h2>Hit ratio per minute, last hour</h2>
<svg id="chart" viewBox="0 0 600 200" preserveAspectRatio="none" role="img" aria-label="hit ratio per minute"></svg>
<div class="muted axis"><span>60 min ago</span><span>bar height = share of requests answered without the upstream (0–100%); hover for figures</span><span>now</span></div>
<h2>Tier split</h2>
<div class="bar" id="tiers"></div>
<div class="legend muted"><span style="background:#2e7d32"></span>memory <b id="t-memory">0</b>
  <span style="background:#81c784"></span>disk <b id="t-disk">0</b>
  <span style="background:#e57373"></span>upstream <b id="t-miss">0</b></div>
<h2>Upstream hosts</h2>
<table><thead><tr><th>busiest</th><th class="n">fetches</th><th class="n">errors</th><th class="n">mean s</th></tr></thead><tbody id="busy"></tbody></table>
<table><thead><tr><th>slowest</th><th class="n">fetches</th><th class="n">errors</th><th class="n">mean s</th></tr></thead><tbody id="slow"></tbody></table>
<h2>Rescued from web archives</h2>
<div class="muted"><b id="rescued">0</b> rescued in <b id="lookups">0</b> archive lookups (archive.enabled)</div>
<table><thead><tr><th>image</th><th>archive</th><th class="n">capture</th></tr></thead><tbody id="recent"></tbody></table>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const pct = (r) => (r === null ? "–" : (100 * r).toFixed(1) + "%");
function table(el, lines) {
  el.textContent = "";
  for (const cells of lines) {
    const tr = document.createElement("tr");
    for (const [v, cls] of cells) {
      const td = document.createElement("td");
      td.textContent = String(v);
      if (cls) td.className = cls;
      tr.appendChild(td);
    }
    el.appendChild(tr);
  }
}
function rows(el, hosts) {
  table(el, hosts.map((h) => [[h.host, ""], [h.fetches, "n"], [h.errors, "n"], [h.mean_seconds.toFixed(3), "n"]]));
}
function chart(history) {
  const svg = $("chart"), ns = "http://www.w3.org/2000/svg";
  svg.textContent = "";
  const w = 600 / history.length;
  history.forEach((p, i) => {
    const total = p.hits + p.misses;
    if (total === 0) return;
    const ratio = p.hits / total, h = 190 * ratio;
    const r = document.createElementNS(ns, "rect");
    r.setAttribute("x", (i * w + 1).toFixed(1));
    r.setAttribute("y", (200 - h).toFixed(1));
    r.setAttribute("width", Math.max(w - 2, 1).toFixed(1));
    r.setAttribute("height", h.toFixed(1));
    r.setAttribute("fill", "#43a047");
    r.setAttribute("class", "point");
    r.setAttribute("data-hits", p.hits);
    r.setAttribute("data-misses", p.misses);
    const t = document.createElementNS(ns, "title");
    t.textContent = new Date(p.t * 1000).toLocaleTimeString() + ": " + pct(ratio) + " (" + p.hits + " hits, " + p.misses + " misses)";
    r.appendChild(t);
    svg.appendChild(r);
  });
}
async function refresh() {
  try {
    const res = await fetch("stats", { cache: "no-store" });
    const s = await res.json();
    $("ratio").textContent = pct(s.hit_ratio);
    $("windows").textContent = "1m " + pct(s.hit_ratio_1m) + " · 5m " + pct(s.hit_ratio_5m) + " · 15m " + pct(s.hit_ratio_15m);
    $("hits").textContent = s.hits;
    $("misses").textContent = s.misses;
    $("stale").textContent = s.stale;
    $("errors").textContent = s.upstream.errors;
    $("fetches").textContent = "of " + s.upstream.fetches + " fetches";
    $("uptime").textContent = Math.floor(s.uptime_secs / 3600) + "h " + Math.floor(s.uptime_secs % 3600 / 60) + "m";
    const total = s.memory.hits + s.disk.hits + s.misses;
    const tiers = $("tiers");
    tiers.textContent = "";
    for (const [n, c] of [[s.memory.hits, "#2e7d32"], [s.disk.hits, "#81c784"], [s.misses, "#e57373"]]) {
      const d = document.createElement("div");
      d.style.width = total ? (100 * n / total) + "%" : "0";
      d.style.background = c;
      tiers.appendChild(d);
    }
    $("t-memory").textContent = s.memory.hits;
    $("t-disk").textContent = s.disk.hits;
    $("t-miss").textContent = s.misses;
    chart(s.history);
    rows($("busy"), s.hosts.slice(0, 10));
    rows($("slow"), [...s.hosts].sort((a, b) => b.mean_seconds - a.mean_seconds).slice(0, 10));
    $("rescued").textContent = s.archive.rescued;
    $("lookups").textContent = s.archive.lookups;
    table($("recent"), [...s.archive.recent].reverse().map((r) => [[r.url, ""], [r.source, ""], [r.capture, "n"]]));
    $("updated").textContent = "updated " + new Date().toLocaleTimeString() + " · refreshes every 5 s";
    document.body.dataset.loaded = "1";
  } catch (e) {
    $("updated").textContent = "cannot read stats: " + e;
  }
}
refresh();
setInterval(refresh, 5000);
</script>
</body>
</html>
"##;

/// The status page response.
pub fn page() -> Response<Body> {
    let mut r = respond::text(StatusCode::OK, "text/html; charset=utf-8", PAGE);
    // The page runs its own inline script and reads /stats from the same origin; nothing else.
    if let Ok(v) = http::HeaderValue::from_str(
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
    ) {
        r.headers_mut().insert(http::header::CONTENT_SECURITY_POLICY, v);
    }
    r
}
