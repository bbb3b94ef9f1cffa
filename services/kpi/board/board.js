// LinePulse live board. Plain ES2020, no build step, no third-party code.
// Snapshots come from /v1/board/events (server-sent events); if those do not get
// through (no EventSource, a closed stream, or silence past the watchdog), the page
// polls /v1/board/snapshot instead. Alerts come from the alerts API (alerts_url from
// /v1/board/config); the ack token is asked once and kept in sessionStorage.
"use strict";

(() => {
  const TOKEN_KEY = "linepulse.alerts.token";
  const WHO_KEY = "linepulse.alerts.who";
  const WATCHDOG_MS = 25000; // > the server's 15 s ping: no event that long = stream is dead
  const ALERTS_EVERY_MS = 5000;
  let config = { alerts_url: null, interval_s: 2 };
  let lastMessage = 0;
  let polling = null;
  let pendingAck = null;

  // -- DOM helpers (textContent only: data never becomes markup) ------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    return node;
  }

  // -- formatting -------------------------------------------------------------------------

  function pct(ratio) {
    if (ratio === null || ratio === undefined) return "–";
    return (Math.round(ratio * 1000) / 10).toFixed(1) + " %";
  }
  function grade(ratio) {
    if (ratio === null || ratio === undefined) return "";
    return ratio >= 0.85 ? "good" : ratio >= 0.6 ? "warn" : "bad";
  }
  function duration(seconds) {
    if (seconds < 60) return Math.round(seconds) + " s";
    if (seconds < 3600) return Math.round(seconds / 60) + " min";
    const h = Math.floor(seconds / 3600);
    return h + " h " + Math.round((seconds % 3600) / 60) + " min";
  }
  function clock(iso) {
    if (!iso) return "";
    return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  }
  function since(iso) {
    if (!iso) return "since –";
    const secs = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    return "since " + clock(iso) + " (" + duration(secs) + ")";
  }

  // -- lines ------------------------------------------------------------------------------

  function tile(line, key, label, ratio) {
    return el(
      "div",
      { class: "tile " + key },
      el("div", { class: "label", text: label }),
      el("div", {
        class: "value " + grade(ratio),
        "data-kpi": key,
        "data-line": line,
        text: pct(ratio),
      }),
    );
  }

  function trendChart(line) {
    const W = 300, H = 80, PAD = 12;
    const box = el("div", { class: "trend" }, el("div", { class: "section-title", text: "OEE trend" }));
    const chart = svg("svg", {
      viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", "data-trend": line.line,
      role: "img", "aria-label": "OEE over the shift",
    });
    for (const level of [0, 0.5, 1]) {
      const y = H - PAD - level * (H - 2 * PAD);
      chart.append(svg("line", { class: "grid", x1: 0, x2: W, y1: y, y2: y }));
    }
    const start = Date.parse(line.shift_start);
    const span = Date.parse(line.shift_end) - start;
    const pts = line.trend.filter((p) => p.oee !== null);
    if (pts.length && span > 0) {
      const xy = pts.map((p) => {
        const x = ((Date.parse(p.t) - start) / span) * W;
        const y = H - PAD - Math.min(1, Math.max(0, p.oee)) * (H - 2 * PAD);
        return [x.toFixed(1), y.toFixed(1)];
      });
      chart.append(svg("polyline", { class: "curve", points: xy.map((p) => p.join(",")).join(" ") }));
    }
    box.append(chart);
    return box;
  }

  function machineList(line) {
    const list = el("ul", { class: "machines" });
    for (const m of line.machines) {
      const state = m.state || "unknown";
      list.append(
        el(
          "li",
          { class: "machine", "data-state": state, "data-machine": m.machine },
          el("span", { class: "name", text: m.machine }),
          el("span", { class: "state", text: state.replace("_", " ") }),
          el("span", { class: "moee", title: "OEE this shift", text: pct(m.oee) }),
          el("span", { class: "since", title: m.since || "", text: since(m.since) }),
        ),
      );
    }
    return el("div", {}, el("div", { class: "section-title", text: "Machines" }), list);
  }

  function paretoBars(line) {
    const box = el("div", { class: "pareto", "data-pareto": line.line },
      el("div", { class: "section-title", text: "Downtime this shift" }));
    if (!line.pareto.length) box.append(el("div", { class: "empty", text: "no closed downtime yet" }));
    const top = line.pareto.length ? line.pareto[0].seconds : 1;
    for (const p of line.pareto.slice(0, 6)) {
      const fill = el("div", { class: "fill" });
      fill.style.width = ((100 * p.seconds) / top).toFixed(1) + "%";
      box.append(el("div", { class: "bar" },
        el("span", { class: "reason", title: p.reason, text: p.reason }),
        el("div", { class: "track" }, fill),
        el("span", { class: "secs", text: duration(p.seconds) })));
    }
    return box;
  }

  function lineCard(line) {
    const k = line.kpis || {};
    const shift = line.shift
      ? line.shift + " " + clock(line.shift_start) + "–" + clock(line.shift_end) + (line.final ? " (closed)" : "")
      : "no shift data yet";
    return el(
      "article",
      { class: "card", "data-line": line.line },
      el("div", { class: "card-head" },
        el("h2", { text: line.line }),
        el("span", { class: "muted", text: shift })),
      el("div", { class: "kpis" },
        tile(line.line, "oee", "OEE", k.oee),
        tile(line.line, "availability", "Availability", k.availability),
        tile(line.line, "performance", "Performance", k.performance),
        tile(line.line, "quality", "Quality", k.quality)),
      line.kpis
        ? el("div", { class: "muted", text:
            `${k.good_count} good of ${k.total_count} · ${k.stops} stops · down ${duration(k.downtime_s)}` })
        : null,
      trendChart(line),
      machineList(line),
      paretoBars(line),
    );
  }

  function render(snapshot) {
    document.getElementById("site").textContent = snapshot.site;
    const lines = document.getElementById("lines");
    lines.replaceChildren(...snapshot.lines.map(lineCard));
    const stamp = new Date().toLocaleTimeString([], { hourCycle: "h23" });
    document.getElementById("updated").textContent = "updated " + stamp;
  }

  function setMode(mode) {
    const conn = document.getElementById("conn");
    conn.dataset.mode = mode;
    conn.textContent = mode;
  }

  // -- feeds: SSE, then polling -------------------------------------------------------------

  function startPolling() {
    if (polling) return;
    setMode("polling");
    const tick = async () => {
      try {
        const response = await fetch("/v1/board/snapshot", { cache: "no-store" });
        if (!response.ok) throw new Error("HTTP " + response.status);
        render(await response.json());
        setMode("polling");
      } catch (error) {
        setMode("offline");
      }
    };
    tick();
    polling = setInterval(tick, config.interval_s * 1000);
  }

  function startEvents() {
    if (!("EventSource" in window)) return startPolling();
    const source = new EventSource("/v1/board/events");
    lastMessage = Date.now();
    source.addEventListener("snapshot", (event) => {
      lastMessage = Date.now();
      setMode("live");
      render(JSON.parse(event.data));
    });
    source.addEventListener("ping", () => { lastMessage = Date.now(); });
    source.addEventListener("error", () => {
      // CONNECTING: the browser retries by itself (the server ends streams now and then).
      if (source.readyState === EventSource.CLOSED) startPolling();
    });
    const watchdog = setInterval(() => {
      if (Date.now() - lastMessage > WATCHDOG_MS) {
        clearInterval(watchdog);
        source.close();
        startPolling();
      }
    }, 1000);
  }

  // -- alerts ---------------------------------------------------------------------------------

  function alertItem(alert) {
    const where = [alert.labels.line, alert.labels.machine].filter(Boolean).join(" / ");
    const acked = alert.state === "acknowledged";
    const item = el(
      "li",
      { class: "alert", "data-state": alert.state, "data-fingerprint": alert.fingerprint },
      el("span", { class: "sev", "data-severity": alert.severity, text: alert.severity }),
      el("span", { class: "summary", text: alert.summary + (where ? " · " + where : "") }),
      el("span", { class: "who", text: acked
        ? "acknowledged by " + alert.acked_by
        : "firing " + since(alert.fired_at ? new Date(alert.fired_at).toISOString() : null) }),
    );
    if (!acked) {
      item.append(el("button", {
        class: "ack", type: "button", "data-ack": alert.fingerprint, text: "Ack",
        onclick: () => ack(alert.fingerprint),
      }));
    }
    return item;
  }

  async function refreshAlerts() {
    if (!config.alerts_url) return;
    const section = document.getElementById("alerts");
    const problem = document.getElementById("alerts-error");
    try {
      const response = await fetch(config.alerts_url + "/v1/alerts", { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const open = (await response.json()).filter(
        (a) => a.state === "firing" || a.state === "acknowledged");
      document.getElementById("alerts-list").replaceChildren(...open.map(alertItem));
      document.getElementById("alerts-count").textContent = "(" + open.length + ")";
      section.hidden = open.length === 0;
      problem.hidden = true;
    } catch (error) {
      section.hidden = false;
      problem.hidden = false;
      problem.textContent = "alerts API unreachable (" + config.alerts_url + "): " + error.message;
    }
  }

  function askCredentials(message) {
    const auth = document.getElementById("auth");
    const err = document.getElementById("auth-error");
    err.hidden = !message;
    err.textContent = message || "";
    document.getElementById("auth-who").value = sessionStorage.getItem(WHO_KEY) || "";
    document.getElementById("auth-token").value = "";
    auth.hidden = false;
    document.getElementById(sessionStorage.getItem(WHO_KEY) ? "auth-token" : "auth-who").focus();
  }

  async function ack(fingerprint) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const who = sessionStorage.getItem(WHO_KEY);
    if (!token || !who) {
      pendingAck = fingerprint;
      askCredentials(null);
      return;
    }
    const response = await fetch(
      config.alerts_url + "/v1/alerts/" + encodeURIComponent(fingerprint) + "/ack", {
        method: "POST",
        headers: { "Authorization": "Bearer " + token, "Content-Type": "application/json" },
        body: JSON.stringify({ who: who, comment: "acknowledged on the live board" }),
      });
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      pendingAck = fingerprint;
      askCredentials("The alerts API refused the token; enter it again.");
      return;
    }
    if (!response.ok) {
      const problem = document.getElementById("alerts-error");
      problem.hidden = false;
      problem.textContent = "ack failed: HTTP " + response.status;
    }
    await refreshAlerts();
  }

  function wireAuthForm() {
    const auth = document.getElementById("auth");
    document.getElementById("auth-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(WHO_KEY, document.getElementById("auth-who").value.trim());
      sessionStorage.setItem(TOKEN_KEY, document.getElementById("auth-token").value.trim());
      auth.hidden = true;
      const fingerprint = pendingAck;
      pendingAck = null;
      if (fingerprint) ack(fingerprint);
    });
    document.getElementById("auth-cancel").addEventListener("click", () => {
      auth.hidden = true;
      pendingAck = null;
    });
  }

  // -- start --------------------------------------------------------------------------------

  async function main() {
    wireAuthForm();
    try {
      const response = await fetch("/v1/board/config", { cache: "no-store" });
      if (response.ok) config = await response.json();
    } catch (error) {
      // keep the defaults: no alerts panel, 2 s polling
    }
    startEvents();
    if (config.alerts_url) {
      refreshAlerts();
      setInterval(refreshAlerts, ALERTS_EVERY_MS);
    }
  }

  main();
})();
