// Shared by the dashboard's pages: element building, time formatting, the live event stream.
"use strict";

const NB = {};

NB.el = function (tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
};

// Server time now, from the last message's `now` and how long ago it arrived (clock skew safe).
NB.clock = { server: 0, local: 0 };
NB.setNow = function (now) { NB.clock.server = now; NB.clock.local = Date.now() / 1000; };
NB.now = function () { return NB.clock.server + (Date.now() / 1000 - NB.clock.local); };

NB.duration = function (seconds) {
  if (seconds === undefined || seconds === null || isNaN(seconds)) return "";
  const s = Math.max(0, seconds);
  if (s < 10) return s.toFixed(1) + " s";
  if (s < 120) return Math.round(s) + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  if (s < 172800) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " d";
};
NB.ago = function (t) { return t ? NB.duration(NB.now() - t) + " ago" : ""; };

NB.macPath = function (mac) { return mac.replace(/:/g, "-"); };

// The live stream: snapshot on connect, then diffs and health; EventSource reconnects by itself
// and the server sends a fresh snapshot then (and after it dropped diffs we were too slow for).
NB.live = function (handlers) {
  const status = document.getElementById("live");
  const show = (text, cls) => { if (status) { status.textContent = text; status.className = "badge " + cls; } };
  const source = new EventSource("/api/events");
  show("connecting", "offline");
  const on = (name, fn) => source.addEventListener(name, (ev) => {
    const data = JSON.parse(ev.data);
    if (data.now) NB.setNow(data.now);
    fn(data);
  });
  on("snapshot", (d) => { show("live", "live"); NB.showHealth(d.health); handlers.snapshot && handlers.snapshot(d); });
  on("diff", (d) => handlers.diff && handlers.diff(d));
  on("health", (d) => { NB.showHealth(d); handlers.health && handlers.health(d); });
  source.onerror = () => show("reconnecting", "offline");
  return source;
};

NB.showHealth = function (h) {
  const badge = document.getElementById("health-badge");
  if (!badge || !h) return;
  const n = (h.problems || []).length;
  badge.textContent = h.status === "ok" ? "healthy" : n + " problem" + (n === 1 ? "" : "s");
  badge.className = "badge " + (h.status === "ok" ? "ok" : "degraded");
  badge.title = (h.problems || []).map((p) => p.kind + ": " + p.message).join("\n");
};

NB.getJSON = async function (url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok && r.status !== 404) throw new Error(url + ": HTTP " + r.status);
  return { status: r.status, body: await r.json() };
};
