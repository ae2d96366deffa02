// One machine: its lifecycle (provision once) and its actions, its timeline as a waterfall, its
// errors, what it would be offered, its files.
"use strict";

(function () {
  const mac = decodeURIComponent(location.pathname.split("/").pop()).replace(/-/g, ":").toLowerCase();
  let tab = null;
  let loading = false, again = false;

  const detail = (e) => Object.entries(e).filter(([k]) => !["time", "stage", "ip"].includes(k))
    .map(([k, v]) => k + "=" + v).join(" ");
  const label = (e) => e.stage + (e.beacon ? ":" + e.beacon : "") + (e.stage === "lifecycle" && e.state ? ":" + e.state : "") + (e.role ? ":" + e.role : "") + (e.status ? " " + e.status : "") + (e.file ? " " + e.file : "") + (e.path ? " " + e.path : "");
  const failed = (e) => e.error || e.answered === false || (e.stage === "beacon" && e.beacon !== "loaded");

  function waterfall(events) {
    const box = document.getElementById("waterfall");
    const axis = document.getElementById("axis");
    if (!events.length) {
      box.replaceChildren(NB.el("p", { class: "empty", text: "netbootd has not seen this machine boot yet" }));
      axis.replaceChildren();
      return;
    }
    // transfers are reported when they end, with their duration: a bar from start to end
    const span = events.map((e) => ({ e, from: e.time - (e.seconds || 0), to: e.time }));
    const t0 = Math.min(...span.map((s) => s.from));
    const t1 = Math.max(...span.map((s) => s.to));
    const total = Math.max(t1 - t0, 0.001);
    box.replaceChildren(...span.map(({ e, from, to }) => {
      const bar = NB.el("span", { class: "bar " + e.stage + (failed(e) ? " error" : "") });
      bar.style.left = (100 * (from - t0) / total) + "%";
      bar.style.width = Math.max(0.4, 100 * (to - from) / total) + "%";
      bar.title = label(e) + "\n" + detail(e);
      return NB.el("div", { class: "wf-row", "data-stage": e.stage },
        NB.el("span", { class: "wf-label", text: label(e), title: label(e) }),
        NB.el("span", { class: "wf-track" }, bar),
        NB.el("span", { class: "wf-time", text: "+" + (to - t0).toFixed(2) + " s" }));
    }));
    axis.replaceChildren(NB.el("span", { text: "0 s" }), NB.el("span", { text: (total / 2).toFixed(2) + " s" }),
      NB.el("span", { text: total.toFixed(2) + " s" }));
    const tbody = document.querySelector("#events tbody");
    tbody.replaceChildren(...events.map((e) => NB.el("tr", { "data-stage": e.stage, class: failed(e) ? "state-failed" : "" },
      NB.el("td", { class: "mono", text: new Date(e.time * 1000).toLocaleTimeString() }),
      NB.el("td", { class: "mono", text: (e.time - t0).toFixed(3) }),
      NB.el("td", { text: e.stage + (e.beacon ? ":" + e.beacon : "") + (e.stage === "lifecycle" && e.state ? ":" + e.state : "") + (e.role ? ":" + e.role : "") }),
      NB.el("td", { class: "mono", text: e.ip || "" }),
      NB.el("td", { class: "mono", text: detail(e) }))));
  }

  function show(doc) {
    const r = doc.row;
    document.title = "netbootd · " + (r.hostname || r.mac);
    document.getElementById("title").textContent = r.mac + (r.hostname ? "  ·  " + r.hostname : "");
    const facts = [
      ["state", r.state], ["lifecycle", r.lifecycle], ["stage", r.stage || "never seen"], ["file", r.name ? r.name + ".toml" : (r.unknown ? "none (unknown MAC)" : "")],
      ["profile", r.profile], ["boot", r.kind], ["firmware", r.firmware ? r.firmware + " / " + r.arch : ""],
      ["address", r.ip], ["last seen", NB.ago(r.last)], ["boot took", r.took ? NB.duration(r.took) : ""],
    ].filter(([, v]) => v);
    document.getElementById("summary").replaceChildren(...facts.map(([k, v]) =>
      NB.el("span", { class: "chip", "data-key": k }, k, NB.el("b", { text: v }))));
    document.getElementById("summary").dataset.state = r.state;
    waterfall(doc.events);
    document.getElementById("timeline-note").textContent = doc.events.length ? doc.events.length + " events" : "";

    const errors = [];
    if (r.held) errors.push("held: " + r.held + " — no answer on any port until the file is fixed");
    if (r.stale) errors.push("its file is broken; serving its last good version: " + r.stale);
    for (const e of doc.errors) if (!errors.some((x) => x.includes(e.text))) errors.push(e.text);
    if (r.error && !r.held) errors.push("last boot: " + r.error);
    document.getElementById("errors").replaceChildren(...(errors.length
      ? errors.map((t) => NB.el("li", { class: "mono", text: t })) : [NB.el("li", { class: "empty", text: "none" })]));

    const keys = Object.keys(doc.explain);
    if (!tab || !keys.includes(tab)) tab = keys[0];
    const tabs = document.getElementById("explain-tabs");
    tabs.replaceChildren(...keys.map((k) => {
      const b = NB.el("button", { text: k, class: k === tab ? "on" : "", "data-arch": k });
      b.onclick = () => { tab = k; show(doc); };
      return b;
    }));
    document.getElementById("explain").textContent = doc.explain[tab].join("\n");
    document.getElementById("explain-note").textContent = doc.server_note || "";

    const file = doc.config.file, profile = doc.config.profile;
    document.getElementById("file-path").textContent = file ? file.path : "";
    document.getElementById("file").textContent = file ? (file.error || file.text) :
      (doc.config.default ? "no file: this machine gets default.toml" : "no file");
    document.getElementById("profile-card").hidden = !profile;
    if (profile) {
      document.getElementById("profile-path").textContent = profile.path;
      document.getElementById("profile").textContent = profile.error || profile.text;
    }
  }

  // ------------------------------------------------------------ lifecycle

  const ACTIONS = {
    reprovision: { target: "provisioning", label: "Reprovision",
      question: "Reprovision " + mac + "? It boots its installer again at its next boot." },
    done: { target: "provisioned", label: "Mark done",
      question: "Mark " + mac + " done (provisioned)? From its next boot on it is sent to its local disk." },
    failed: { target: "failed", label: "Mark failed",
      question: "Mark " + mac + " failed? Its next boot is what its [lifecycle] on_failure says (hold: refused)." },
  };
  let lifecycleState = "";

  function showLifecycle(doc) {
    const card = document.getElementById("lifecycle-card");
    const row = doc.row;
    const history = (doc.history || []).slice().sort((a, b) => (b.at || 0) - (a.at || 0)); // newest first
    card.hidden = !row && !history.length;
    if (card.hidden) return;
    const once = !!(row && row.once);
    lifecycleState = row ? row.state : "";
    card.dataset.state = lifecycleState;
    const facts = row ? [
      ["state", row.state],
      ["since", row.since ? NB.time(row.since) + " (" + NB.ago(row.since) + ")" : ""],
      ["by", row.by], ["from", row.source],
    ].filter(([, v]) => v) : [];
    document.getElementById("lifecycle-facts").replaceChildren(...facts.map(([k, v]) =>
      NB.el("span", { class: "chip" + (k === "state" ? " lc-" + v : ""), "data-key": k }, k, NB.el("b", { text: v }))));
    document.getElementById("lifecycle-note").textContent = !once
      ? "This machine does not provision once ([lifecycle] once = true in its file): its stored state is not used."
      : (row.by ? "" : "No transition recorded yet: a provision-once machine starts out provisioning.");
    document.getElementById("lifecycle-actions").hidden = !once;
    for (const [action, a] of Object.entries(ACTIONS)) {
      const button = document.getElementById("act-" + action);
      button.disabled = !once || lifecycleState === a.target;
      button.title = button.disabled && once ? "it is " + a.target + " already" : "";
    }
    document.querySelector("#lifecycle-history tbody").replaceChildren(...(history.length ? history.map((h) =>
      NB.el("tr", { "data-state": h.state, "data-by": h.by || "" },
        NB.el("td", { class: "mono", text: NB.time(h.at) }),
        NB.el("td", {}, h.previous ? h.previous + " → " : "", NB.el("span", { class: "lc lc-" + h.state, text: h.state })),
        NB.el("td", { class: "by", text: h.by || "" }),
        NB.el("td", { class: "mono", text: h.source || "" }),
        NB.el("td", { text: h.note || "" })))
      : [NB.el("tr", {}, NB.el("td", { class: "empty", colSpan: 5, text: "no transition recorded" }))]));
  }

  for (const [action, a] of Object.entries(ACTIONS)) {
    document.getElementById("act-" + action).addEventListener("click", () => {
      NB.confirm(document.getElementById("confirm"), a.question, a.label, async () => {
        const res = await NB.act({ action, macs: [mac] });
        NB.showResult(document.getElementById("action-result"), res);
        await load();
      });
    });
  }

  async function lifecycleDoc() {
    try {
      const { status, body } = await NB.getJSON("/api/lifecycle/" + NB.macPath(mac));
      return status === 200 ? body : null;
    } catch (e) {
      return null; // the machine's own page still shows
    }
  }

  async function load() {
    if (loading) { again = true; return; }
    loading = true;
    try {
      const [{ status, body }, lifecycle] = await Promise.all([
        NB.getJSON("/api/machine/" + NB.macPath(mac)), lifecycleDoc()]);
      if (status === 404) {
        document.getElementById("title").textContent = mac;
        document.getElementById("summary").textContent = body.error;
      } else {
        NB.setNow(body.now);
        show(body);
      }
      if (lifecycle) showLifecycle(lifecycle);
    } finally {
      loading = false;
      if (again) { again = false; setTimeout(load, 250); }
    }
  }

  load();
  NB.live({
    snapshot() { load(); },
    diff(d) { if (d.rows.some((r) => r.mac === mac) || d.removed.includes(mac)) load(); },
  });
})();
