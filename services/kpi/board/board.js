// LinePulse live board. Plain ES2020, no build step, no third-party code.
// Snapshots come from /v1/board/events (server-sent events); if those do not get
// through (no EventSource, a closed stream, or silence past the watchdog), the page
// polls /v1/board/snapshot instead. Alerts come from the alerts API (alerts_url from
// /v1/board/config); the ack token is asked once and kept in sessionStorage.
// Reason coding: each line card lists the line's recent stops without a reason (from
// /v1/stops, same origin) with the machine's codes (/v1/reasons); the operator's name is
// kept in localStorage. That part of a card outlives re-renders, so a snapshot arriving
// while someone picks a reason does not take the list away from under them. Coding a
// stop is a write, which the KPI API accepts only with a token: on the first 401 the
// page asks for it once, keeps it in sessionStorage (this tab only) and sends it as a
// bearer token from then on; a token the API refuses is forgotten and asked again.
// Times are the plant's (the snapshot's `timezone`), never the browser's: a wall screen
// in another zone, or a laptop abroad, shows the shift as the plant lives it. A wall TV
// cannot scroll: open alerts are summarised one row per line, worst first, so the line
// cards stay on screen however many alerts are open.
"use strict";

(() => {
  const TOKEN_KEY = "linepulse.alerts.token";
  const WHO_KEY = "linepulse.alerts.who";
  const WATCHDOG_MS = 25000; // > the server's 15 s ping: no event that long = stream is dead
  const ALERTS_EVERY_MS = 5000;
  const STOPS_EVERY_MS = 10000;
  const STOPS_LIMIT = 20;
  const WEEKS_EVERY_MS = 60000;
  const SPC_EVERY_MS = 10000;
  const MONTH_EVERY_MS = 300000; // the month's cost reads a month of records: not too often
  const STOP_WHO_KEY = "linepulse.stops.who";
  const CODED_KEEP_MS = 60000; // a stop just coded stays in the "to code" list this long
  const UNASSIGNED = "unassigned";
  const API_TOKEN_KEY = "linepulse.api.token";
  const SEVERITY_RANK = { critical: 0, warning: 1, info: 2 };
  let config = { alerts_url: null, interval_s: 2 };
  let plantZone; // IANA zone of the plant, from the snapshot (undefined: the browser's)
  let codeStates = ["down", "idle"]; // stop states offered for reason coding (snapshot)
  const expandedAlerts = new Set(); // lines whose alerts are all listed, not just the worst
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
  // A value that may be missing, with the reason it is (a "–" always says why).
  function maybe(text, why) {
    return text === "–" ? { text: text, title: why || "no value", class: "na" } : { text: text };
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
  function count(n) {
    if (n === null || n === undefined) return "–";
    return Math.round(n).toLocaleString("en-US");
  }
  // -- plant time ---------------------------------------------------------------------------
  const formats = new Map();
  function format(options) {
    const key = plantZone + JSON.stringify(options);
    if (!formats.has(key)) {
      let made;
      try {
        made = new Intl.DateTimeFormat("en-GB", Object.assign({ timeZone: plantZone }, options));
      } catch (error) { // a zone this browser does not know: its own, rather than nothing
        made = new Intl.DateTimeFormat("en-GB", options);
      }
      formats.set(key, made);
    }
    return formats.get(key);
  }
  function parts(ms, options) {
    const out = {};
    for (const part of format(options).formatToParts(ms)) out[part.type] = part.value;
    return out;
  }
  function clock(iso) {
    if (!iso) return "";
    const p = parts(Date.parse(iso), { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
    return p.hour + ":" + p.minute;
  }
  function dayOf(ms) {
    const p = parts(ms, { year: "numeric", month: "2-digit", day: "2-digit" });
    return p.year + "-" + p.month + "-" + p.day;
  }
  function isToday(iso) { return dayOf(Date.parse(iso)) === dayOf(Date.now()); }
  // "Sun 6 Dec": the plant's date of a moment.
  function dateLabel(iso) {
    const p = parts(Date.parse(iso), { weekday: "short", day: "numeric", month: "short" });
    return p.weekday + " " + p.day + " " + p.month;
  }
  // A plant time, with its date unless it is today.
  function when(iso) {
    if (!iso) return "";
    return (isToday(iso) ? "" : dateLabel(iso) + " ") + clock(iso);
  }
  // Alert times: RFC 3339 text, or epoch milliseconds as the alerts API first sent them.
  function toIso(value) {
    if (value === null || value === undefined || value === "") return null;
    const ms = typeof value === "number" ? value : Date.parse(value);
    return Number.isFinite(ms) ? new Date(ms).toISOString() : null;
  }
  // Whether the shift `line` shows is under way now (its record says when it runs).
  function isLive(line) {
    const now = Date.now();
    return Boolean(line.shift_start && line.shift_end) &&
      Date.parse(line.shift_start) <= now && now < Date.parse(line.shift_end);
  }
  // The share of the shift's planned time with data, shown only below 100 %: rounded down,
  // so that a share short of all never reads "100 %".
  const COVERAGE_TITLE = "share of planned time with data";
  const COVERAGE_LOW = 0.8; // below this, KPI alert rules hold still (min_coverage default)
  function coverageBadge(coverage, attrs) {
    if (coverage === null || coverage === undefined || coverage >= 1) return null;
    return el("span", Object.assign({
      class: "coverage" + (coverage < COVERAGE_LOW ? " low" : ""),
      title: COVERAGE_TITLE,
      text: "data " + Math.floor(coverage * 100) + " %",
    }, attrs));
  }
  // Since when a state holds; how long only while its shift is live and the state began
  // today (an old store's "since 14:00 (822 h 37 min)" says nothing to a shift lead).
  function since(iso, live) {
    if (!iso) return "no state received";
    if (!live || !isToday(iso)) return "since " + when(iso);
    const secs = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    return "since " + clock(iso) + " (" + duration(secs) + ")";
  }

  // -- lines ------------------------------------------------------------------------------

  function tile(line, key, label, ratio, why) {
    const shown = maybe(pct(ratio), why);
    return el(
      "div",
      { class: "tile " + key },
      el("div", { class: "label", text: label }),
      el("div", {
        class: "value " + grade(ratio) + (shown.class ? " " + shown.class : ""),
        "data-kpi": key,
        "data-line": line,
        title: shown.title,
        text: shown.text,
      }),
      shown.title ? el("div", { class: "hint", "data-why": key, text: shown.title }) : null,
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
    const live = isLive(line);
    for (const m of line.machines) {
      const state = m.state || "unknown";
      const oee = maybe(pct(m.oee), (m.why || {}).oee);
      const stopped = state === "down" || state === "idle";
      const reason = m.reason && m.reason !== UNASSIGNED ? m.reason : null;
      list.append(
        el(
          "li",
          { class: "machine", "data-state": state, "data-machine": m.machine },
          el("span", { class: "name", title: m.machine, text: m.machine }),
          el("span", { class: "state", text: state.replace("_", " ") }),
          el("span", { class: "moee" + (oee.class ? " na" : ""), "data-moee": m.machine,
            title: oee.title || "OEE this shift", text: oee.text }),
          stopped ? el("span", { class: "why-stopped" + (reason ? "" : " unknown"),
            "data-reason": m.machine, text: reason || "no reason given yet" }) : null,
          el("span", { class: "foot" },
            el("span", { class: "since", title: m.since || "", text: since(m.since, live) }),
            coverageBadge(m.coverage, { "data-coverage": m.machine })),
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

  // The six big losses and the time without data, in the order of
  // linepulse.production.LOSS_KEYS. No data is its own grey bar: not knowing what a machine
  // did is not an equipment failure.
  const LOSSES = {
    equipment_failure_s: { label: "Equipment failure", kind: "availability" },
    setup_s: { label: "Setup", kind: "availability" },
    small_stops_s: { label: "Small stops", kind: "performance" },
    slow_cycles_s: { label: "Slow cycles", kind: "performance" },
    startup_rejects_s: { label: "Start-up rejects", kind: "quality" },
    production_rejects_s: { label: "Production rejects", kind: "quality" },
    no_data_s: { label: "No data", kind: "nodata" },
  };

  function waterfallRow(key, label, kind, from, width, text, title) {
    const fill = el("div", { class: "fill" });
    fill.style.marginLeft = (100 * Math.max(0, Math.min(1, from))).toFixed(2) + "%";
    fill.style.width = (100 * Math.max(0, Math.min(1 - Math.max(0, from), width))).toFixed(2) + "%";
    return el("div", { class: "step", "data-step": key, "data-kind": kind, title: title },
      el("span", { class: "what", text: label }),
      el("div", { class: "track" }, fill),
      el("span", { class: "secs", text: text }));
  }

  // An amount in the plant's currency ("€1,234"), or "1,234 XYZ" for a code this browser
  // does not know as a currency.
  function money(amount, currency) {
    try {
      return new Intl.NumberFormat("en-GB", { style: "currency", currency: currency,
        maximumFractionDigits: 0 }).format(amount);
    } catch (error) {
      return count(amount) + " " + currency;
    }
  }

  // -- the month against its loss budget (plant) ------------------------------------------

  // "2026-12" -> "December": the month the API priced (the newest record's).
  function monthName(month) {
    const [year, number] = month.split("-").map(Number);
    return new Intl.DateTimeFormat("en-GB", { month: "long", timeZone: "UTC" })
      .format(Date.UTC(year, number - 1, 1));
  }

  // One line above the alerts: what the month's losses cost so far, against the plant's
  // budget, and where the month ends at this rate (GET /v1/costs/budget). Hidden without
  // rates (422) or records (404): a plant that prices nothing sees no money.
  async function refreshMonth() {
    const strip = document.getElementById("month");
    let body;
    try {
      const response = await fetch("/v1/costs/budget", { cache: "no-store" });
      if (response.status === 404 || response.status === 422) { strip.hidden = true; return; }
      if (!response.ok) throw new Error(await problemText(response));
      body = await response.json();
    } catch (error) {
      strip.hidden = false;
      strip.replaceChildren(el("span", { class: "muted",
        text: "month against budget unavailable: " + error.message }));
      return;
    }
    const cur = body.currency;
    const items = [
      el("span", { class: "section-title", text: monthName(body.month) + " so far" }),
      el("span", { text: "losses " },
        el("b", { "data-month-cost": "", text: money(body.cost, cur) })),
    ];
    if (body.budget !== null) {
      const elapsed = body.month_planned_s > 0 ? body.planned_s / body.month_planned_s : null;
      items.push(el("span", {
        text: "of " + money(body.budget, cur) + " budget (" + pct(body.share_of_budget) + ")",
        title: elapsed === null ? "" : pct(elapsed) + " of the month's planned time measured so far",
      }));
    }
    if (body.projected !== null) {
      const verdict = body.on_track === null ? null
        : el("span", { class: "verdict " + (body.on_track ? "good" : "bad"),
          "data-month-on-track": String(body.on_track),
          text: body.on_track ? "within budget" : "over budget" });
      items.push(el("span", { title: body.method },
        el("span", { text: "projected " + money(body.projected, cur) + " by month end" }),
        verdict ? " · " : null, verdict));
    }
    strip.replaceChildren(...items);
    strip.hidden = false;
  }

  function waterfall(line) {
    const w = line.waterfall;
    const cost = w.money;
    const title = el("div", { class: "section-title", text: "Losses this shift" });
    if (cost) {
      title.append(el("span", { class: "money", "data-money-total": line.line,
        title: "what this shift's losses cost so far at the plant's rates",
        text: " · " + money(cost.total, cost.currency) }));
    }
    const box = el("div", { class: "waterfall", "data-waterfall": line.line }, title);
    // A line record sums its machines' times (docs/kpi.md): 7 machines over 4 h plan 28 h.
    // So the steps are shares of planned time, and planned time is shown per machine.
    const planned = w.planned_s;
    const machines = w.machines || 1;
    const scale = planned > 0 ? planned : 1;
    const machineTime = (s) => duration(Math.abs(s)) + (machines > 1 ? " of machine time" : "");
    box.append(waterfallRow("planned_s", "Planned time", "planned", 0, planned / scale,
      duration(planned / machines) + (machines > 1 ? " × " + machines : ""),
      machines > 1
        ? duration(planned / machines) + " per machine on average; " + duration(planned) +
          " of machine time over the line's " + machines + " machines"
        : duration(planned) + " planned production time"));
    let left = planned;
    for (const step of w.losses) {
      const info = LOSSES[step.loss] || { label: step.loss, kind: "other" };
      const lost = step.seconds;
      left -= lost;
      // A negative loss (parts faster than their ideal cycle) is a gain: drawn the other way.
      const priced = cost && cost.losses[step.loss] !== undefined
        ? " · " + money(cost.losses[step.loss], cost.currency) : "";
      box.append(waterfallRow(step.loss, info.label, info.kind, Math.min(left, left + lost) / scale,
        Math.abs(lost) / scale, (lost > 0 ? "−" : lost < 0 ? "+" : "") + pct(Math.abs(lost) / scale) + priced,
        (lost < 0 ? "gained " : "lost ") + machineTime(lost)));
    }
    const productive = w.fully_productive_s;
    box.append(waterfallRow("fully_productive_s", "Fully productive", "productive", 0,
      productive / scale, pct(Math.max(0, productive) / scale),
      machineTime(Math.max(0, productive)) + ": ideal cycle time of the good parts"));
    return box;
  }

  function bottleneck(line) {
    const b = line.bottleneck;
    const row = el("div", { class: "bottleneck", "data-bottleneck": line.line },
      el("span", { class: "section-title", text: "Bottleneck" }));
    if (!b) {
      row.append(el("span", { class: "muted", text: "none this shift" }));
      return row;
    }
    row.append(el("span", { class: "machine-id", "data-bottleneck-machine": b.machine, text: b.machine }));
    if (b.stop_s !== null && b.stop_s !== undefined) {
      row.append(el("span", { class: "muted", text: "stopped " + duration(b.stop_s) + " while others waited" }));
    }
    return row;
  }

  function forecast(line) {
    const f = line.forecast;
    const made = f.output_count, projected = f.projected_count, target = f.target_count;
    const behind = f.on_track === false;
    const box = el("div", {
      class: "forecast", "data-forecast": line.line,
      "data-on-track": f.on_track === null ? "unknown" : String(f.on_track),
    }, el("div", { class: "section-title", text: "Output forecast" }));
    const top = Math.max(target, projected || 0, made || 0) * 1.08 || 1;
    const share = (n) => (100 * Math.max(0, Math.min(1, (n || 0) / top))).toFixed(2) + "%";
    const proj = el("div", { class: "projected" + (behind ? " behind" : "") });
    proj.style.width = share(projected);
    const sofar = el("div", { class: "sofar" });
    sofar.style.width = share(made);
    const marker = el("div", { class: "target", title: "target " + count(target) });
    marker.style.left = share(target);
    box.append(el("div", { class: "gauge", role: "img",
      "aria-label": `made ${count(made)}, projected ${count(projected)}, target ${count(target)}` },
      proj, sofar, marker));
    const projText = projected === null || projected === undefined
      ? { text: "projected –", title: "nothing projected yet: the output machine has no planned time so far" }
      : { text: "projected " + count(projected) };
    box.append(el("div", { class: "figures" },
      el("span", maybe(count(made), "no count from the output machine yet")),
      el("span", { class: "proj-text" + (behind ? " behind" : " ahead"), "data-projected": line.line,
        title: projText.title, text: projText.text }),
      el("span", { class: "muted", text: "target " + count(target) })));
    return box;
  }

  function oeeTile(line, k, why) {
    const box = tile(line.line, "oee", "OEE", k.oee, why.oee);
    if (k.constraint || (k.oee_constraint !== null && k.oee_constraint !== undefined)) {
      const constraint = line.machines.find((m) => m.machine === k.constraint);
      const shown = maybe(pct(k.oee_constraint), constraint && (constraint.why || {}).oee
        ? k.constraint + ": " + constraint.why.oee : null);
      box.append(el("div", { class: "sub" },
        el("span", { class: "muted", text: "constraint " + (k.constraint || "") + " " }),
        el("span", {
          class: grade(k.oee_constraint) + (shown.class ? " na" : ""), "data-kpi": "oee_constraint",
          "data-line": line.line, title: shown.title, text: shown.text,
        })));
    }
    return box;
  }

  // The line's output is what leaves its output machine (config `output`, else the last
  // machine): a sum over machines would add bottles, packs and pallets.
  function summary(line, k) {
    const out = line.output || {};
    const made = out.count === null || out.count === undefined ? "–" : count(out.count);
    const box = el("div", { class: "muted summary", "data-summary": line.line });
    box.append(el("span", Object.assign({ "data-output": line.line }, maybe(made,
      "no count from the output machine " + (out.machine || "") + " yet"))));
    let text = " good out of " + (out.machine || "the line") + ` · ${k.stops} stops`;
    if (k.product) text += " · " + k.product;
    if (k.nee !== null && k.nee !== undefined) text += " · NEE " + pct(k.nee);
    if (k.teep !== null && k.teep !== undefined) text += " · TEEP " + pct(k.teep);
    box.append(document.createTextNode(text));
    return box;
  }

  // The shift's name and plant-local times, with its date unless it is today's live shift.
  function shiftText(line) {
    if (!line.shift) return "no shift data yet";
    const live = isLive(line);
    const date = live && isToday(line.shift_start) ? "" : dateLabel(line.shift_start) + " ";
    const state = line.final ? " (closed)" : !live && Date.parse(line.shift_end) <= Date.now() ? " (ended)" : "";
    return line.shift + " " + date + clock(line.shift_start) + "–" + clock(line.shift_end) + state;
  }

  // The shift's report (GET /v1/reports/shift), as the next lead gets it by mail.
  function reportLink(line) {
    if (!line.shift || !line.shift_date) return null;
    const query = new URLSearchParams({
      line: line.line, date: line.shift_date, shift: line.shift, format: "html" });
    return el("a", {
      class: "report-link", href: "/v1/reports/shift?" + query, target: "_blank",
      rel: "noopener", "data-report": line.line, title: "the shift report", text: "report",
    });
  }

  // A note for the next shift (POST /v1/notes of the alerts API), mailed with the
  // shift's report; the alerts token as for acks.
  function noteButton(lineId) {
    if (!config.alerts_url) return null;
    return el("button", {
      type: "button", class: "note-button", "data-note": lineId, title: "a note for the next shift",
      text: "note", onclick: () => openNote(lineId),
    });
  }

  let noteLine = null;

  function openNote(lineId, message) {
    noteLine = lineId;
    document.getElementById("note-line").textContent = lineId;
    const err = document.getElementById("note-error");
    err.hidden = !message;
    err.textContent = message || "";
    document.getElementById("note-who").value = sessionStorage.getItem(WHO_KEY) || "";
    const hasToken = Boolean(sessionStorage.getItem(TOKEN_KEY));
    document.getElementById("note-token-label").hidden = hasToken;
    document.getElementById("note-token").required = !hasToken;
    document.getElementById("note").hidden = false;
    document.getElementById("note-text").focus();
  }

  async function saveNote(event) {
    event.preventDefault();
    const who = document.getElementById("note-who").value.trim();
    const text = document.getElementById("note-text").value.trim();
    const entered = document.getElementById("note-token").value.trim();
    if (entered) sessionStorage.setItem(TOKEN_KEY, entered);
    sessionStorage.setItem(WHO_KEY, who);
    const response = await fetch(config.alerts_url + "/v1/notes", {
      method: "POST",
      headers: { "Authorization": "Bearer " + sessionStorage.getItem(TOKEN_KEY), "Content-Type": "application/json" },
      body: JSON.stringify({ line: noteLine, text: text, by: who }),
    });
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      openNote(noteLine, "The alerts API refused the token; enter it again.");
      return;
    }
    if (!response.ok) {
      openNote(noteLine, "not saved: " + await problemText(response));
      return;
    }
    document.getElementById("note-text").value = "";
    document.getElementById("note-token").value = "";
    document.getElementById("note").hidden = true;
  }

  function wireNoteForm() {
    document.getElementById("note-form").addEventListener("submit", saveNote);
    document.getElementById("note-cancel").addEventListener("click", () => {
      document.getElementById("note").hidden = true;
    });
  }

  function lineContent(line) {
    const k = line.kpis || {};
    const why = line.why || {};
    const shift = shiftText(line);
    return [
      el("div", { class: "card-head" },
        el("h2", { text: line.line }),
        el("span", { class: "head-right" },
          coverageBadge(k.coverage, { "data-coverage-line": line.line }),
          el("span", { class: "muted shift", "data-shift": line.line, text: shift }),
          reportLink(line),
          noteButton(line.line))),
      el("div", { class: "kpis" },
        oeeTile(line, k, why),
        tile(line.line, "availability", "Availability", k.availability, why.availability),
        tile(line.line, "performance", "Performance", k.performance, why.performance),
        tile(line.line, "quality", "Quality", k.quality, why.quality)),
      line.kpis ? summary(line, k) : null,
      line.kpis ? bottleneck(line) : null,
      line.forecast ? forecast(line) : null,
      line.waterfall ? waterfall(line)
        : line.kpis ? el("div", { class: "empty", "data-no-waterfall": line.line,
          text: "losses: " + (why.oee || "not known yet") }) : null,
      trendChart(line),
      machineList(line),
      paretoBars(line),
    ].filter(Boolean);
  }

  // One card per line, kept across snapshots: the snapshot part is rebuilt each time,
  // the stops panel (with whatever the operator is choosing) stays.
  const cards = new Map();

  function render(snapshot) {
    document.getElementById("site").textContent = snapshot.site;
    if (snapshot.timezone && snapshot.timezone !== plantZone) {
      plantZone = snapshot.timezone;
      formats.clear();
      refreshAlerts(); // drawn in the old zone
    }
    if (Array.isArray(snapshot.code_states)) codeStates = snapshot.code_states;
    const lines = document.getElementById("lines");
    const order = snapshot.lines.map((line) => {
      let card = cards.get(line.line);
      if (!card) {
        const live = el("div", { class: "live" });
        const stops = stopsPanel(line.line);
        const weeks = weeksPanel(line.line);
        const spc = el("section", { class: "spc", "data-spc": line.line, hidden: "" });
        card = {
          node: el("article", { class: "card", "data-line": line.line }, live, weeks.node, spc, stops.node),
          live, stops, weeks, spc,
        };
        if (spcCharts) showSpc(card, line.line);
        cards.set(line.line, card);
      }
      card.live.replaceChildren(...lineContent(line));
      return card.node;
    });
    const same = order.length === lines.children.length && order.every((node, i) => lines.children[i] === node);
    if (!same) lines.replaceChildren(...order);
    const p = parts(Date.now(), { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
    const updated = document.getElementById("updated");
    updated.textContent = "updated " + p.hour + ":" + p.minute + ":" + p.second;
    updated.title = "plant time (" + (plantZone || "browser's zone") + ")";
  }

  // -- reason coding ------------------------------------------------------------------------

  const reasonTrees = new Map(); // machine -> Promise of its categories ([] = free text)

  function reasonsOf(machine) {
    if (!reasonTrees.has(machine)) {
      const tree = fetch("/v1/reasons?machine=" + encodeURIComponent(machine), { cache: "no-store" })
        .then((r) => (r.ok ? r.json() : { categories: [] }))
        .then((body) => body.categories || [])
        .catch(() => { reasonTrees.delete(machine); return []; });
      reasonTrees.set(machine, tree);
    }
    return reasonTrees.get(machine);
  }

  function storedWho() {
    try { return localStorage.getItem(STOP_WHO_KEY) || ""; } catch (error) { return ""; }
  }
  function rememberWho(who) {
    try { localStorage.setItem(STOP_WHO_KEY, who); } catch (error) { /* private mode */ }
    for (const card of cards.values()) {
      if (card.stops.who !== document.activeElement) card.stops.who.value = who;
    }
  }

  // The message of an error answer, whatever its shape: FastAPI's `detail` (text or a
  // validation list), an `error` text or object, or a problem document's `title`.
  async function problemText(response) {
    try {
      const body = await response.json();
      if (typeof body.detail === "string") return body.detail;
      if (Array.isArray(body.detail) && body.detail.length) return body.detail.map((d) => d.msg).join("; ");
      const error = body.error;
      if (typeof error === "string") return error;
      if (error && typeof error.message === "string") return error.message;
      if (typeof body.message === "string") return body.message;
      if (typeof body.title === "string") return body.title;
    } catch (error) { /* not JSON */ }
    return "HTTP " + response.status;
  }

  function stopsPanel(lineId) {
    const panel = {
      all: false, items: new Map(), coded: new Map(), timer: null,
      list: el("ul", { class: "stops-list" }),
      note: el("div", { class: "empty" }),
      count: el("span", { class: "count" }),
      who: el("input", {
        class: "who", type: "text", maxlength: "128", placeholder: "your name",
        "aria-label": "Your name (who codes the stops)", "data-stops-who": lineId,
      }),
    };
    panel.who.value = storedWho();
    panel.who.addEventListener("change", () => rememberWho(panel.who.value.trim()));
    const title = el("span", { class: "section-title", text: "Stops to code " }, panel.count);
    const toggle = el("button", { type: "button", class: "small", "data-stops-toggle": lineId, text: "all recent" });
    toggle.addEventListener("click", () => {
      panel.all = !panel.all;
      toggle.textContent = panel.all ? "to code only" : "all recent";
      title.firstChild.textContent = panel.all ? "Recent stops " : "Stops to code ";
      panel.items.clear();
      panel.list.replaceChildren();
      refresh();
    });
    panel.node = el("section", { class: "stops", "data-stops": lineId, hidden: "" },
      el("div", { class: "stops-head" }, title,
        el("label", { class: "who-label" }, el("span", { class: "muted", text: "by" }), panel.who),
        toggle),
      panel.note, panel.list);

    async function refresh() {
      // Only the states an operator codes (down, idle): an ongoing changeover is not one.
      const states = codeStates.map((state) => "&state=" + encodeURIComponent(state)).join("");
      const query = "line=" + encodeURIComponent(lineId) + (panel.all ? "" : "&unassigned=true") + states + "&limit=" + STOPS_LIMIT;
      let stops;
      try {
        const response = await fetch("/v1/stops?" + query, { cache: "no-store" });
        if (response.status === 404) { panel.node.hidden = true; return; } // no stops API here
        if (!response.ok) throw new Error(await problemText(response));
        stops = await response.json();
      } catch (error) {
        panel.node.hidden = false;
        panel.note.textContent = "stops unavailable: " + error.message;
        return;
      }
      panel.node.hidden = false;
      showStops(stops);
    }

    function showStops(stops) {
      const now = Date.now();
      const ids = new Set(stops.map((s) => String(s.id)));
      let merged = false;
      for (const [id, kept] of panel.coded) {
        if (kept.until < now) panel.coded.delete(id);
        else if (!ids.has(id)) { stops.push(kept.stop); merged = true; }
      }
      if (merged) stops.sort((a, b) => Date.parse(b.start) - Date.parse(a.start));
      const todo = stops.filter((s) => s.reason === UNASSIGNED).length;
      panel.count.textContent = panel.all ? "(" + stops.length + ")" : "(" + todo + ")";
      panel.note.textContent = stops.length ? "" : panel.all ? "no recent stops" : "every stop has a reason";
      const nodes = stops.map((stop) => {
        const id = String(stop.id);
        let item = panel.items.get(id);
        if (!item) {
          item = stopItem(stop);
          panel.items.set(id, item);
        } else {
          updateStop(item, stop);
        }
        return item.node;
      });
      for (const id of [...panel.items.keys()]) if (!ids.has(id) && !panel.coded.has(id)) panel.items.delete(id);
      const current = [...panel.list.children];
      const same = nodes.length === current.length && nodes.every((n, i) => current[i] === n);
      // Do not move the list about under someone choosing a reason; the next refresh will.
      if (!same && !panel.list.contains(document.activeElement)) panel.list.replaceChildren(...nodes);
      else if (!same) for (const node of nodes) if (!node.isConnected) panel.list.append(node);
    }

    function stopItem(stop) {
      const item = {
        stop: stop,
        reason: el("span", { class: "reason" }),
        when: el("span", { class: "when" }),
        msg: el("span", { class: "msg", role: "status" }),
        pick: el("span", { class: "pick" }),
        button: el("button", { type: "button", class: "set", text: "Set" }),
      };
      item.node = el("li", { class: "stop", "data-stop": String(stop.id), "data-stop-machine": stop.machine },
        el("span", { class: "name", text: stop.machine }), item.when, item.reason,
        el("span", { class: "controls" }, item.pick, item.button), item.msg);
      item.button.addEventListener("click", () => assign(item));
      updateStop(item, stop);
      reasonsOf(stop.machine).then((categories) => {
        item.input = chooser(categories, stop);
        item.pick.replaceChildren(item.input);
      });
      return item;
    }

    function updateStop(item, stop) {
      item.stop = stop;
      item.node.dataset.reason = stop.reason;
      item.node.dataset.planned = String(Boolean(stop.planned));
      const length = stop.duration_s === null || stop.duration_s === undefined ? null : stop.duration_s;
      item.when.textContent = when(stop.start) + (stop.end ? "–" + clock(stop.end) : " ongoing") +
        (length === null ? "" : " · " + duration(length)) + (stop.state ? " · " + stop.state.replace("_", " ") : "");
      const fixes = Array.isArray(stop.corrections) ? stop.corrections.length : stop.corrections || 0;
      item.reason.textContent = stop.reason === UNASSIGNED ? "no reason" : stop.reason;
      item.reason.title = stop.original_reason && fixes
        ? "was " + stop.original_reason + " (" + fixes + " correction" + (fixes > 1 ? "s" : "") + ")"
        : "";
      item.reason.classList.toggle("unassigned", stop.reason === UNASSIGNED);
      item.button.textContent = stop.reason === UNASSIGNED ? "Set" : "Change";
    }

    function chooser(categories, stop) {
      const codes = categories.flatMap((c) => c.codes || []);
      if (!codes.length) {
        return el("input", { class: "code", type: "text", maxlength: "64", placeholder: "reason code",
          "aria-label": "Reason code for " + stop.machine });
      }
      const select = el("select", { class: "code", "aria-label": "Reason for " + stop.machine },
        el("option", { value: "", text: "reason…" }));
      for (const category of categories) {
        const group = el("optgroup", { label: category.name + (category.planned ? " (planned)" : "") });
        for (const code of category.codes || []) group.append(el("option", { value: code, text: code }));
        select.append(group);
      }
      if (codes.includes(stop.reason)) select.value = stop.reason;
      return select;
    }

    async function assign(item) {
      const who = panel.who.value.trim();
      const code = item.input ? item.input.value.trim() : "";
      item.msg.classList.remove("ok");
      if (!code) { item.msg.textContent = "choose a reason first"; item.input && item.input.focus(); return; }
      if (!who) { item.msg.textContent = "enter your name (by) first"; panel.who.focus(); return; }
      rememberWho(who);
      item.button.disabled = true;
      item.msg.textContent = "saving…";
      try {
        const post = () => {
          const headers = { "Content-Type": "application/json" };
          const token = sessionStorage.getItem(API_TOKEN_KEY);
          if (token) headers["Authorization"] = "Bearer " + token;
          return fetch("/v1/stops/" + encodeURIComponent(item.stop.id) + "/reason", {
            method: "POST",
            headers: headers,
            body: JSON.stringify({ reason: code, by: who }),
          });
        };
        let response = await post();
        for (let asked = 0; response.status === 401 && asked < 3; asked++) {
          const refused = sessionStorage.getItem(API_TOKEN_KEY) !== null;
          sessionStorage.removeItem(API_TOKEN_KEY);
          item.msg.textContent = "token needed";
          const token = await askApiToken(
            refused ? "The KPI API refused the token; enter it again." : null);
          if (!token) throw new Error("coding a stop needs the KPI API token");
          sessionStorage.setItem(API_TOKEN_KEY, token);
          item.msg.textContent = "saving…";
          response = await post();
        }
        if (response.status === 401) sessionStorage.removeItem(API_TOKEN_KEY);
        if (!response.ok) throw new Error(await problemText(response));
        let stop = null;
        try { stop = await response.json(); } catch (error) { /* no body */ }
        if (!stop || stop.id === undefined) stop = Object.assign({}, item.stop, { reason: code });
        updateStop(item, stop);
        panel.coded.set(String(stop.id), { stop: stop, until: Date.now() + CODED_KEEP_MS });
        item.msg.textContent = "coded by " + who;
        item.msg.classList.add("ok");
      } catch (error) {
        item.msg.textContent = error.message;
      } finally {
        item.button.disabled = false;
      }
    }

    panel.refresh = refresh;
    refresh();
    panel.timer = setInterval(refresh, STOPS_EVERY_MS);
    return panel;
  }

  // -- weeks: OEE and output per ISO week, next week projected (/v1/trends) ---------------

  // Rebuilt once a minute, outside the snapshot: the figures move with the day records.
  function weeksPanel(lineId) {
    const panel = {
      body: el("div", { class: "weeks-body" }),
      next: el("div", { class: "muted weeks-next", "data-weeks-next": lineId }),
    };
    panel.node = el("section", { class: "weeks", "data-weeks": lineId, hidden: "" },
      el("span", { class: "section-title", text: "Weeks" }), panel.body, panel.next);

    function change(points) {
      if (points === null || points === undefined) return el("span", { class: "muted", text: "" });
      const pts = Math.round(points * 1000) / 10;
      const arrow = pts > 0 ? "▲ +" : pts < 0 ? "▼ " : "= ";
      return el("span", {
        class: "delta " + (pts > 0 ? "up" : pts < 0 ? "down" : ""),
        title: "OEE against the week before, in percentage points",
        text: arrow + pts.toFixed(1) + " pts",
      });
    }

    function row(week) {
      const made = week.output_count === null ? "–" : count(week.output_count);
      const partial = week.complete ? "" : " (" + week.days + " d so far)";
      return el("div", { class: "week", "data-week": week.week },
        el("span", { class: "muted", text: week.week.slice(5) }),
        el("span", Object.assign({ class: "value " + grade(week.oee), "data-week-oee": week.week },
          maybe(pct(week.oee), "no planned time with a known ideal cycle time that week"))),
        change(week.change ? week.change.oee : null),
        el("span", { class: "muted", text: made + " out" + partial }));
    }

    async function refresh() {
      let body;
      try {
        const response = await fetch("/v1/trends?weeks=4&line=" + encodeURIComponent(lineId), { cache: "no-store" });
        if (response.status === 404 || response.status === 422) { panel.node.hidden = true; return; }
        if (!response.ok) throw new Error(await problemText(response));
        body = await response.json();
      } catch (error) {
        panel.node.hidden = false;
        panel.body.replaceChildren(el("div", { class: "empty", text: "weeks unavailable: " + error.message }));
        return;
      }
      panel.node.hidden = body.weeks.length === 0;
      panel.body.replaceChildren(...body.weeks.map(row));
      const p = body.projection;
      panel.next.textContent = p && p.output_count !== null
        ? "next week " + p.week.slice(5) + ": ≈ " + count(p.output_count) + " at "
          + count(p.output_per_planned_h) + " per planned hour"
        : "";
      panel.next.title = p ? p.method : "";
    }

    refresh();
    panel.timer = setInterval(refresh, WEEKS_EVERY_MS);
    return panel;
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

  // -- control charts (SPC) ----------------------------------------------------------------

  // The plant's control charts (GET /v1/spc of this API, from the spc topic), each on its
  // line's card: the last subgroup means (across a shift change too), the centre line,
  // the control limits, the points that broke a rule.
  let spcCharts = null;
  const SPC_SHOWN = 60;

  function controlChart(chart) {
    const W = 300, H = 90, PAD = 8;
    const xs = chart.points.map((p) => p.x);
    const lo = Math.min(chart.limits.lcl, ...xs), hi = Math.max(chart.limits.ucl, ...xs);
    const span = (hi - lo) || 1;
    const y = (v) => (H - PAD - ((v - lo) / span) * (H - 2 * PAD)).toFixed(1);
    const x = (i) => (chart.points.length > 1 ? (i / (chart.points.length - 1)) * W : W / 2).toFixed(1);
    const plot = svg("svg", {
      viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", "data-spc-chart": chart.chart,
      role: "img", "aria-label": "control chart of " + chart.chart,
    });
    for (const [cls, v] of [["limit", chart.limits.ucl], ["cl", chart.limits.center], ["limit", chart.limits.lcl]]) {
      plot.append(svg("line", { class: cls, x1: 0, x2: W, y1: y(v), y2: y(v) }));
    }
    if (chart.points.length) {
      plot.append(svg("polyline", { class: "curve", points: chart.points.map((p, i) => x(i) + "," + y(p.x)).join(" ") }));
    }
    chart.points.forEach((p, i) => {
      if (!p.broken.length) return;
      // A line of no length with a round cap and a stroke that does not scale: a round
      // dot however the chart is stretched to its card.
      const dot = svg("line", {
        class: "violation", x1: x(i), x2: x(i), y1: y(p.x), y2: y(p.x), "data-broken": p.broken.join(" "),
      });
      const title = svg("title", {});
      title.textContent = clock(p.end) + ": " + p.broken.join(", ");
      dot.append(title);
      plot.append(dot);
    });
    const last = chart.points[chart.points.length - 1];
    const worst = [...chart.points].reverse().find((p) => p.broken.length);
    const state = !last ? "no subgroup yet"
      : last.broken.length ? "out of control: " + last.broken.join(", ")
      : worst ? "in control (last rule broken " + clock(worst.end) + ")" : "in control";
    const digits = Math.max(0, 3 - Math.floor(Math.log10(Math.abs(chart.limits.center) || 1)));
    const fix = (v) => v.toFixed(Math.min(4, digits));
    return el("div", { class: "spc-chart" },
      el("div", { class: "spc-head" },
        el("span", { text: chart.machine + " · " + chart.signal }),
        el("span", { class: "muted", text: "LCL " + fix(chart.limits.lcl) + " · CL " + fix(chart.limits.center) + " · UCL " + fix(chart.limits.ucl) })),
      plot,
      el("div", { class: "spc-state " + (last && last.broken.length ? "bad" : ""), "data-spc-state": chart.chart, text: state }));
  }

  function showSpc(card, lineId) {
    const mine = (spcCharts || []).filter((c) => c.line === lineId);
    card.spc.hidden = mine.length === 0;
    card.spc.replaceChildren(
      ...(mine.length ? [el("span", { class: "section-title", text: "Control charts" })] : []),
      ...mine.map(controlChart));
  }

  async function refreshSpc() {
    try {
      const response = await fetch("/v1/spc?last=" + SPC_SHOWN, { cache: "no-store" });
      if (!response.ok) return; // no charts to draw: no panel
      spcCharts = (await response.json()).charts;
    } catch (error) {
      return; // the board's status line says when this API is unreachable
    }
    for (const [lineId, card] of cards) showSpc(card, lineId);
  }

  // -- alerts ---------------------------------------------------------------------------------

  function alertItem(alert, hidden) {
    const labels = alert.labels || {};
    const where = [labels.line, labels.machine].filter(Boolean).join(" / ");
    const acked = alert.state === "acknowledged";
    const fired = toIso(alert.fired_at);
    const item = el(
      "li",
      { class: "alert", "data-state": alert.state, "data-fingerprint": alert.fingerprint,
        hidden: hidden ? "" : null },
      el("span", { class: "sev", "data-severity": alert.severity, text: alert.severity }),
      el("span", { class: "summary", title: alert.summary + (where ? " · " + where : ""),
        text: alert.summary + (where ? " · " + where : "") }),
      el("span", { class: "who", text: acked
        ? "acknowledged by " + alert.acked_by
        : fired ? "firing " + since(fired, true) : "firing" }),
    );
    if (!acked) {
      item.append(el("button", {
        class: "ack", type: "button", "data-ack": alert.fingerprint, text: "Ack",
        onclick: () => ack(alert.fingerprint),
      }));
    }
    return item;
  }

  // Worst first: severity, then firing before acknowledged, then the newest.
  function severityOrder(a, b) {
    const rank = (x) => (x.severity in SEVERITY_RANK ? SEVERITY_RANK[x.severity] : 3);
    return rank(a) - rank(b) || (a.state === "acknowledged") - (b.state === "acknowledged");
  }
  function alertOrder(a, b) {
    const fired = (x) => Date.parse(toIso(x.fired_at) || 0) || 0;
    return severityOrder(a, b) || fired(b) - fired(a);
  }

  // One row per line (or "plant" for alerts of no line), the line with the worst alert
  // first (then the one with the most open alerts): its worst alert with its Ack
  // button, and how many more are open, listed on demand. A wall screen shows at most one
  // row per line, so the alerts never push the line cards off it.
  function alertGroups(open) {
    const byLine = new Map();
    for (const alert of [...open].sort(alertOrder)) {
      const line = (alert.labels || {}).line || "plant";
      if (!byLine.has(line)) byLine.set(line, []);
      byLine.get(line).push(alert);
    }
    const groups = [...byLine.entries()].sort(
      ([, a], [, b]) => severityOrder(a[0], b[0]) || b.length - a.length || alertOrder(a[0], b[0]));
    return groups.map(([line, alerts]) => {
      const expanded = expandedAlerts.has(line);
      const list = el("ul", { class: "group-alerts" },
        ...alerts.map((alert, i) => alertItem(alert, i > 0 && !expanded)));
      const more = alerts.length > 1 ? el("button", {
        type: "button", class: "small more", "data-alerts-more": line,
        "aria-expanded": String(expanded),
        text: expanded ? "fewer" : "+" + (alerts.length - 1) + " more",
        onclick: () => {
          if (expandedAlerts.has(line)) expandedAlerts.delete(line); else expandedAlerts.add(line);
          refreshAlerts();
        },
      }) : null;
      return el("li", { class: "alert-group", "data-alert-line": line,
        "data-worst": alerts[0].severity, "data-open": String(alerts.length) },
        el("span", { class: "group-line", text: line }),
        el("span", { class: "group-count", text: String(alerts.length) }),
        list, more);
    });
  }

  // The alerts API answers a list; a wrapped one ({"items"|"alerts": [...]}) is read too.
  function alertList(body) {
    if (Array.isArray(body)) return body;
    if (body && Array.isArray(body.items)) return body.items;
    if (body && Array.isArray(body.alerts)) return body.alerts;
    throw new Error("unexpected answer from the alerts API");
  }

  async function refreshAlerts() {
    if (!config.alerts_url) return;
    const section = document.getElementById("alerts");
    const problem = document.getElementById("alerts-error");
    try {
      const response = await fetch(config.alerts_url + "/v1/alerts", { cache: "no-store" });
      if (!response.ok) throw new Error(await problemText(response));
      const open = alertList(await response.json()).filter(
        (a) => a.state === "firing" || a.state === "acknowledged");
      document.getElementById("alerts-list").replaceChildren(...alertGroups(open));
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
      problem.textContent = "ack failed: " + await problemText(response);
    }
    await refreshAlerts();
  }

  // Resolves with the token entered, or null if the operator cancels.
  function askApiToken(message) {
    const dialog = document.getElementById("api-auth");
    const form = document.getElementById("api-auth-form");
    const input = document.getElementById("api-auth-token");
    const err = document.getElementById("api-auth-error");
    const cancel = document.getElementById("api-auth-cancel");
    err.hidden = !message;
    err.textContent = message || "";
    input.value = "";
    dialog.hidden = false;
    input.focus();
    return new Promise((resolve) => {
      const done = (value) => {
        form.removeEventListener("submit", onSubmit);
        cancel.removeEventListener("click", onCancel);
        dialog.hidden = true;
        resolve(value);
      };
      const onSubmit = (event) => { event.preventDefault(); done(input.value.trim() || null); };
      const onCancel = () => done(null);
      form.addEventListener("submit", onSubmit);
      cancel.addEventListener("click", onCancel);
    });
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
    wireNoteForm();
    try {
      const response = await fetch("/v1/board/config", { cache: "no-store" });
      if (response.ok) config = await response.json();
      if (config.timezone) plantZone = config.timezone;
    } catch (error) {
      // keep the defaults: no alerts panel, 2 s polling
    }
    startEvents();
    refreshMonth();
    setInterval(refreshMonth, MONTH_EVERY_MS);
    refreshSpc();
    setInterval(refreshSpc, SPC_EVERY_MS);
    if (config.alerts_url) {
      refreshAlerts();
      setInterval(refreshAlerts, ALERTS_EVERY_MS);
    }
  }

  main();
})();
