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

// ---------------------------------------------------------------- lifecycle actions

// POST an action to the management API: JSON (the server refuses anything else, and a browser
// cannot send JSON cross-site without a preflight this server never grants), with the page's own
// credentials (the Basic auth the browser already holds for this origin).
NB.act = async function (doc) {
  let r;
  try {
    r = await fetch("/api/lifecycle", {
      method: "POST", cache: "no-store", credentials: "same-origin",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(doc),
    });
  } catch (e) {
    return { ok: false, status: 0, body: null, text: "the request failed: " + e.message };
  }
  const text = await r.text();
  let body = null;
  try { body = JSON.parse(text); } catch (e) { body = null; }
  return { ok: r.ok, status: r.status, body, text };
};

NB.ACTION_WORDS = { reprovision: "reprovisioned", done: "marked done", failed: "marked failed" };

// What an action did, in words: the machines changed and any error, or the server's own refusal.
NB.showResult = function (box, res) {
  const lines = [];
  const b = res.body;
  if (b && Array.isArray(b.changed)) {
    const word = NB.ACTION_WORDS[b.action] || b.action;
    lines.push(b.changed.length
      ? word + ": " + b.changed.map((c) => c.mac + " (now " + c.state + ")").join(", ")
      : "no machine matched: nothing changed");
    for (const e of b.errors || []) lines.push("not stored for " + e.mac + ": " + e.error);
  } else {
    lines.push((res.status ? "HTTP " + res.status + ": " : "") + (res.text || "").trim());
  }
  const ok = res.ok && !(b && b.errors && b.errors.length);
  box.replaceChildren(...lines.map((t) => NB.el("div", { text: t })));
  box.className = "result " + (ok ? "ok" : "bad");
  box.dataset.ok = ok ? "true" : "false";
  box.hidden = false;
};

// A confirmation step before an action: the question and its own Confirm / Cancel buttons in
// `box` (an element holding .confirm-text, .confirm-yes and .confirm-no). `run` is async.
NB.confirm = function (box, question, label, run) {
  const yes = box.querySelector(".confirm-yes"), no = box.querySelector(".confirm-no");
  box.querySelector(".confirm-text").textContent = question;
  yes.textContent = label;
  yes.disabled = false;
  box.hidden = false;
  yes.focus();
  no.onclick = () => { box.hidden = true; };
  yes.onclick = async () => {
    yes.disabled = true;
    try { await run(); } finally { box.hidden = true; yes.disabled = false; }
  };
};

NB.time = function (t) { return t ? new Date(t * 1000).toLocaleString() : ""; };
