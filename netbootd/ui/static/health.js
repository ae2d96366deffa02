// What is wrong: problems, configuration errors with file and line, held machines, images, cache.
"use strict";

(function () {
  const list = (id, items, render) => document.getElementById(id).replaceChildren(...(items.length
    ? items.map(render) : [NB.el("li", { class: "empty", text: "none" })]));
  const machineLink = (name) => NB.el("a", { href: "/machine/" + name, class: "mono", text: name });
  const mib = (n) => (n / 1048576).toFixed(n < 10485760 ? 1 : 0) + " MiB";

  function show(h) {
    NB.setNow(h.now);
    NB.showHealth(h);
    document.getElementById("status").textContent = "netbootd is " + h.status + ": " + h.summary;
    document.getElementById("facts").textContent =
      `last reload ${NB.ago(h.last_reload)}, up ${NB.duration(h.uptime)}, ${h.unattributed} request(s) no machine could be found for`;
    list("problems", h.problems, (p) => NB.el("li", { "data-kind": p.kind },
      NB.el("span", { class: "kind " + p.kind, text: p.kind }), " ", NB.el("span", { class: "mono", text: p.what }),
      NB.el("div", { text: p.message }),
      p.machines.length ? NB.el("div", { class: "muted", text: "machines: " + p.machines.join(", ") }) : null));
    const tbody = document.querySelector("#errors tbody");
    tbody.replaceChildren(...h.errors.map((e) => NB.el("tr", {},
      NB.el("td", { class: "mono", text: e.file }), NB.el("td", { class: "mono", text: e.line || "" }),
      NB.el("td", { class: "mono", text: e.key }), NB.el("td", { text: e.message }))));
    document.getElementById("no-errors").hidden = h.errors.length > 0;
    list("held", h.held, (m) => NB.el("li", {}, machineLink(m.name), NB.el("div", { class: "mono", text: m.reason })));
    list("stale", h.stale, (m) => NB.el("li", {}, machineLink(m.name), NB.el("div", { class: "mono", text: m.cause })));
    const images = document.querySelector("#images tbody");
    images.replaceChildren(...h.images.map((i) => NB.el("tr", { class: i.ok ? "state-done" : "state-failed" },
      NB.el("td", { class: "mono", text: i.ref }),
      NB.el("td", { class: "state", text: i.ok ? (i.digest ? "resolved " + i.digest.slice(0, 19) : "not resolved yet") : i.kind + ": " + i.error }),
      NB.el("td", { class: "mono", text: i.machines.join(", ") }))));
    document.getElementById("no-images").hidden = h.images.length > 0;
    const cache = document.getElementById("cache");
    if (!h.cache) cache.replaceChildren(NB.el("p", { class: "empty", text: "no image proxy (HTTP is off)" }));
    else {
      const bar = NB.el("span");
      bar.style.width = Math.min(100, 100 * h.cache.bytes / Math.max(1, h.cache.max_bytes)) + "%";
      cache.replaceChildren(NB.el("div", { class: "meter" }, bar),
        NB.el("div", { class: "muted", text: `${mib(h.cache.bytes)} of ${mib(h.cache.max_bytes)} in ${h.cache.blobs} blob(s) at ${h.cache.path}` +
          (h.cache.usable ? "" : " — UNUSABLE: blobs are served pass-through") }));
    }
  }

  let timer = null;
  async function load() {
    timer = null;
    const { body } = await NB.getJSON("/api/health");
    show(body);
  }
  const soon = () => { if (!timer) timer = setTimeout(load, 200); };
  load();
  setInterval(load, 30000); // the cache and images change without a health event
  NB.live({ snapshot: soon, health: soon });
})();
