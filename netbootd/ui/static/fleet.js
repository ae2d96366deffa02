// The fleet page: one table row per machine, updated in place from the live stream. Its filters
// are kept in the URL's query (?show=, lifecycle=, q=, stuck=): a link or a reload keeps them.
"use strict";

(function () {
  const ACTIVE = 1800; // seconds: a boot run that started this recently counts as "booting now"
  const rows = new Map(); // mac -> row (as the server sent it)
  const trs = new Map(); // mac -> <tr>
  const order = []; // MACs, sorted: the table's order
  const tbody = document.querySelector("#fleet tbody");
  let pending = null; // rows changed since the last paint, painted once per animation frame
  let fullPaint = false;
  const selected = new Set(); // MACs of provision-once machines ticked for an action

  const filterValue = () => document.querySelector("input[name=show]:checked").value;
  const lifecycleValue = () => document.querySelector("input[name=lifecycle]:checked").value;
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
      case "booting": if (r.state !== "booting") return false; break;
      case "stuck": if (!isStuck(r)) return false; break;
      case "failed": if (r.state !== "failed" && r.state !== "unanswered") return false; break;
      case "held": if (r.state !== "held" && !r.held) return false; break;
      case "unknown": if (!r.unknown) return false; break;
    }
    const lc = lifecycleValue();
    return lc === "all" || r.lifecycle === lc;
  }

  function cells(r) {
    const link = NB.el("a", { href: "/machine/" + NB.macPath(r.mac), text: r.mac });
    const error = r.held ? "held: " + r.held : (r.error || (r.stale ? "file broken, serving last good: " + r.stale : ""));
    const firmware = r.firmware ? r.firmware + (r.arch ? " / " + r.arch : "") : "";
    const kind = r.unknown ? (r.kind ? "default: " + r.kind : "unknown, no default") : r.kind;
    let tick = null;
    if (r.lifecycle) {
      tick = NB.el("input", { type: "checkbox", class: "select", checked: selected.has(r.mac), title: "select " + r.mac });
      tick.addEventListener("change", () => { if (tick.checked) selected.add(r.mac); else selected.delete(r.mac); actionButtons(); });
    }
    const lcTitle = r.lifecycle_by ? r.lifecycle + " since " + NB.time(r.lifecycle_since) + " (" + r.lifecycle_by + ")" : "";
    return [
      NB.el("td", { class: "select" }, tick),
      NB.el("td", { class: "mac" }, link),
      NB.el("td", { class: "hostname", text: r.hostname || "" }),
      NB.el("td", { class: "profile", text: r.profile || "" }),
      NB.el("td", { class: "kind", text: kind || "" }),
      NB.el("td", { class: "firmware", text: firmware }),
      NB.el("td", { class: "stage", text: r.stage || "" }),
      NB.el("td", { class: "state", text: r.state }),
      NB.el("td", { class: "lifecycle", title: lcTitle },
        r.lifecycle ? NB.el("span", { class: "lc lc-" + r.lifecycle, text: r.lifecycle }) : null),
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
    tr.className = "state-" + r.state + (isStuck(r) ? " stuck" : "") + (r.lifecycle ? " lc-" + r.lifecycle : "") +
      (flash ? " flash" : "");
    tr.dataset.state = r.state;
    tr.dataset.lifecycle = r.lifecycle || "";
    tr.dataset.stage = r.stage || "";
    tr.hidden = !matches(r);
  }

  function remove(mac) {
    rows.delete(mac);
    selected.delete(mac);
    const tr = trs.get(mac);
    if (tr) tr.remove();
    trs.delete(mac);
    const i = order.indexOf(mac);
    if (i >= 0) order.splice(i, 1);
  }

  function summarize() {
    const stages = new Map(), states = new Map(), lifecycles = new Map();
    let active = 0, done = 0, booting = 0, failed = 0, stuck = 0, shown = 0;
    const now = NB.now();
    for (const r of rows.values()) {
      const stage = r.stage || "never seen";
      stages.set(stage, (stages.get(stage) || 0) + 1);
      states.set(r.state, (states.get(r.state) || 0) + 1);
      if (r.unknown) states.set("unknown MAC", (states.get("unknown MAC") || 0) + 1);
      if (r.lifecycle) lifecycles.set(r.lifecycle, (lifecycles.get(r.lifecycle) || 0) + 1);
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
    chips("lifecycle-counts", lifecycles);
    document.getElementById("total").textContent = rows.size + " machines";
    const pct = (n) => (active ? (100 * n / active) : 0) + "%";
    const bar = document.getElementById("progress").children;
    bar[0].style.width = pct(done); bar[1].style.width = pct(booting); bar[2].style.width = pct(failed);
    document.getElementById("progress-label").textContent = active
      ? `${done} of ${active} booted, ${booting} booting${stuck ? " (" + stuck + " stuck)" : ""}, ${failed} failed (boots started in the last ${ACTIVE / 60} min)`
      : "no machine is booting";
    document.getElementById("shown").textContent = shown === rows.size ? "" : `${shown} of ${rows.size} shown`;
    document.getElementById("no-machines").hidden = rows.size > 0;
    actionButtons();
  }

  // ------------------------------------------------------------ actions (reprovision)

  const chosen = () => [...selected].filter((mac) => rows.has(mac) && rows.get(mac).lifecycle).sort();
  const failedCount = () => [...rows.values()].filter((r) => r.lifecycle === "failed").length;
  const listed = (macs) => macs.slice(0, 8).join(", ") + (macs.length > 8 ? " and " + (macs.length - 8) + " more" : "");

  function actionButtons() {
    const n = chosen().length, f = failedCount();
    const sel = document.getElementById("reprovision-selected"), all = document.getElementById("reprovision-failed");
    sel.disabled = n === 0;
    sel.textContent = "Reprovision selected" + (n ? " (" + n + ")" : "");
    all.disabled = f === 0;
    all.textContent = "Reprovision all failed" + (f ? " (" + f + ")" : "");
    const shownOnce = [...trs.entries()].filter(([mac, tr]) => !tr.hidden && rows.get(mac).lifecycle);
    const box = document.getElementById("select-all");
    box.checked = shownOnce.length > 0 && shownOnce.every(([mac]) => selected.has(mac));
  }

  async function act(doc) {
    const res = await NB.act(doc);
    NB.showResult(document.getElementById("action-result"), res);
    if (res.body && Array.isArray(res.body.changed)) for (const c of res.body.changed) selected.delete(c.mac);
    fullPaint = true;
    schedule([]);
  }

  document.getElementById("reprovision-selected").addEventListener("click", () => {
    const macs = chosen();
    if (!macs.length) return;
    NB.confirm(document.getElementById("confirm"),
      `Reprovision ${macs.length} machine${macs.length === 1 ? "" : "s"} (${listed(macs)})? ` +
      "Each boots its installer again at its next boot.",
      "Reprovision " + macs.length, () => act({ action: "reprovision", macs }));
  });
  document.getElementById("reprovision-failed").addEventListener("click", () => {
    const macs = [...rows.values()].filter((r) => r.lifecycle === "failed").map((r) => r.mac).sort();
    NB.confirm(document.getElementById("confirm"),
      `Reprovision every failed machine (${macs.length} here: ${listed(macs)})? ` +
      "Each boots its installer again at its next boot.",
      "Reprovision all failed", () => act({ action: "reprovision", state: "failed" }));
  });
  document.getElementById("select-all").addEventListener("change", (ev) => {
    for (const [mac, tr] of trs) {
      if (tr.hidden || !rows.get(mac).lifecycle) continue;
      if (ev.target.checked) selected.add(mac); else selected.delete(mac);
    }
    fullPaint = true;
    schedule([]);
  });

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

  // filters, kept in the URL's query; and the ages and stuck marks that change as time passes
  function readQuery() {
    const q = new URLSearchParams(location.search);
    for (const name of ["show", "lifecycle"]) {
      const input = q.get(name) && document.querySelector(`input[name=${name}][value="${CSS.escape(q.get(name))}"]`);
      if (input) input.checked = true;
    }
    if (q.get("q") !== null) document.getElementById("search").value = q.get("q");
    if (q.get("stuck") !== null && Number(q.get("stuck")) >= 1) document.getElementById("stuck-seconds").value = q.get("stuck");
  }
  function writeQuery() {
    const q = new URLSearchParams();
    if (filterValue() !== "all") q.set("show", filterValue());
    if (lifecycleValue() !== "all") q.set("lifecycle", lifecycleValue());
    const search = document.getElementById("search").value.trim();
    if (search) q.set("q", search);
    const stuck = document.getElementById("stuck-seconds").value;
    if (stuck && stuck !== "120") q.set("stuck", stuck);
    const query = q.toString();
    history.replaceState(null, "", location.pathname + (query ? "?" + query : ""));
  }
  readQuery();
  const refilter = () => { writeQuery(); fullPaint = true; schedule([]); };
  for (const id of ["filters", "lifecycle-filters"]) {
    document.getElementById(id).addEventListener("input", refilter);
    document.getElementById(id).addEventListener("change", refilter);
  }
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
