// The fleet page: one table row per machine, updated in place from the live stream.
"use strict";

(function () {
  const ACTIVE = 1800; // seconds: a boot run that started this recently counts as "booting now"
  const rows = new Map(); // mac -> row (as the server sent it)
  const trs = new Map(); // mac -> <tr>
  const order = []; // MACs, sorted: the table's order
  const tbody = document.querySelector("#fleet tbody");
  let pending = null; // rows changed since the last paint, painted once per animation frame
  let fullPaint = false;

  const filterValue = () => document.querySelector("input[name=show]:checked").value;
  const stuckAfter = () => Math.max(1, Number(document.getElementById("stuck-seconds").value) || 120);
  const isStuck = (r) => r.state === "booting" && NB.now() - r.last > stuckAfter();

  function elapsed(r) {
    if (r.state === "done") return r.took;
    if (!r.start) return null;
    if (r.state === "booting") return NB.now() - r.start;
    return r.last - r.start;
  }

  function matches(r) {
    const search = document.getElementById("search").value.trim().toLowerCase();
    if (search && ![r.mac, r.hostname, r.profile, r.name, r.ip].some((v) => v && v.toLowerCase().includes(search))) return false;
    switch (filterValue()) {
      case "booting": return r.state === "booting";
      case "stuck": return isStuck(r);
      case "failed": return r.state === "failed" || r.state === "unanswered";
      case "held": return r.state === "held" || !!r.held;
      case "unknown": return !!r.unknown;
      default: return true;
    }
  }

  function cells(r) {
    const link = NB.el("a", { href: "/machine/" + NB.macPath(r.mac), text: r.mac });
    const error = r.held ? "held: " + r.held : (r.error || (r.stale ? "file broken, serving last good: " + r.stale : ""));
    const firmware = r.firmware ? r.firmware + (r.arch ? " / " + r.arch : "") : "";
    const kind = r.unknown ? (r.kind ? "default: " + r.kind : "unknown, no default") : r.kind;
    return [
      NB.el("td", { class: "mac" }, link),
      NB.el("td", { class: "hostname", text: r.hostname || "" }),
      NB.el("td", { class: "profile", text: r.profile || "" }),
      NB.el("td", { class: "kind", text: kind || "" }),
      NB.el("td", { class: "firmware", text: firmware }),
      NB.el("td", { class: "stage", text: r.stage || "" }),
      NB.el("td", { class: "state", text: r.state }),
      NB.el("td", { class: "elapsed", text: NB.duration(elapsed(r)) }),
      NB.el("td", { class: "seen", text: NB.ago(r.last) }),
      NB.el("td", { class: "error", text: error, title: error }),
    ];
  }

  function render(r, flash) {
    let tr = trs.get(r.mac);
    if (!tr) {
      tr = NB.el("tr", { "data-mac": r.mac });
      trs.set(r.mac, tr);
      // keep the table sorted by MAC: insert before the first larger one
      let lo = 0, hi = order.length;
      while (lo < hi) { const mid = (lo + hi) >> 1; if (order[mid] < r.mac) lo = mid + 1; else hi = mid; }
      const before = order[lo] ? trs.get(order[lo]) : null;
      order.splice(lo, 0, r.mac);
      tbody.insertBefore(tr, before);
    }
    tr.replaceChildren(...cells(r));
    tr.className = "state-" + r.state + (isStuck(r) ? " stuck" : "") + (flash ? " flash" : "");
    tr.dataset.state = r.state;
    tr.dataset.stage = r.stage || "";
    tr.hidden = !matches(r);
  }

  function remove(mac) {
    rows.delete(mac);
    const tr = trs.get(mac);
    if (tr) tr.remove();
    trs.delete(mac);
    const i = order.indexOf(mac);
    if (i >= 0) order.splice(i, 1);
  }

  function summarize() {
    const stages = new Map(), states = new Map();
    let active = 0, done = 0, booting = 0, failed = 0, stuck = 0, shown = 0;
    const now = NB.now();
    for (const r of rows.values()) {
      const stage = r.stage || "never seen";
      stages.set(stage, (stages.get(stage) || 0) + 1);
      states.set(r.state, (states.get(r.state) || 0) + 1);
      if (r.unknown) states.set("unknown MAC", (states.get("unknown MAC") || 0) + 1);
      if (r.start && now - r.start < ACTIVE && r.state !== "held") {
        active++;
        if (r.state === "done") done++;
        else if (r.state === "booting") { booting++; if (isStuck(r)) stuck++; }
        else failed++;
      }
      if (!trs.get(r.mac).hidden) shown++;
    }
    const chips = (id, map) => document.getElementById(id).replaceChildren(
      ...[...map.entries()].sort().map(([k, v]) => NB.el("span", { class: "chip", "data-key": k }, k, NB.el("b", { text: v }))));
    chips("stage-counts", stages);
    chips("state-counts", states);
    document.getElementById("total").textContent = rows.size + " machines";
    const pct = (n) => (active ? (100 * n / active) : 0) + "%";
    const bar = document.getElementById("progress").children;
    bar[0].style.width = pct(done); bar[1].style.width = pct(booting); bar[2].style.width = pct(failed);
    document.getElementById("progress-label").textContent = active
      ? `${done} of ${active} booted, ${booting} booting${stuck ? " (" + stuck + " stuck)" : ""}, ${failed} failed (boots started in the last ${ACTIVE / 60} min)`
      : "no machine is booting";
    document.getElementById("shown").textContent = shown === rows.size ? "" : `${shown} of ${rows.size} shown`;
    document.getElementById("no-machines").hidden = rows.size > 0;
  }

  function paint() {
    const changed = pending;
    pending = null;
    if (fullPaint) {
      fullPaint = false;
      for (const r of rows.values()) render(r, false);
    } else {
      for (const r of changed.values()) render(r, true);
    }
    summarize();
  }

  function schedule(changed) {
    if (!pending) { pending = new Map(); requestAnimationFrame(paint); }
    for (const r of changed) pending.set(r.mac, r);
  }

  NB.live({
    snapshot(d) {
      const present = new Set(d.machines.map((r) => r.mac));
      for (const mac of [...rows.keys()]) if (!present.has(mac)) remove(mac);
      for (const r of d.machines) rows.set(r.mac, r);
      fullPaint = true;
      schedule([]);
      NB.showHealth(d.health);
    },
    diff(d) {
      for (const mac of d.removed) remove(mac);
      for (const r of d.rows) rows.set(r.mac, r);
      schedule(d.rows);
    },
  });

  // filters, and the ages and stuck marks that change as time passes
  const refilter = () => { fullPaint = true; schedule([]); };
  document.getElementById("filters").addEventListener("input", refilter);
  document.getElementById("filters").addEventListener("change", refilter);
  setInterval(() => {
    for (const r of rows.values()) {
      const tr = trs.get(r.mac);
      if (!tr || (tr.hidden && filterValue() !== "stuck")) continue;
      tr.querySelector("td.elapsed").textContent = NB.duration(elapsed(r));
      tr.querySelector("td.seen").textContent = NB.ago(r.last);
      tr.classList.toggle("stuck", isStuck(r));
      if (filterValue() === "stuck") tr.hidden = !matches(r);
    }
    summarize();
  }, 1000);
})();
