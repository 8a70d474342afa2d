/* gridcharge status page: polls the controller's own API and draws everything itself.
 *
 * get_dev_info every cycle (the cycle comes with get_history), get_cm_vars every 5 s and after an
 * edit, get_grid_log (the last signals, newest first) every 10 s, get_history every 30 s (only
 * the buckets since the last one it has), one request at a time. A hidden tab asks nothing. Every value from the API is
 * put in the page as text (textContent), never as HTML. Each number shown carries the API's own
 * value in data-raw, so a test can compare the page with get_dev_info exactly.
 */
"use strict";

(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const VARS_EVERY_S = 5;
  const SIGNALS_EVERY_S = 10;
  const SIGNALS_SHOWN = 12;
  const MIN_CHART_S = 600; // a young history is drawn over at least 10 minutes
  const TICK_STEPS_S = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600];
  const state = {
    cycleS: 1,
    bucketS: 30,
    spanS: 86400,
    lastCycle: null,
    lastCycleAt: 0,
    history: null, // {now, points: [{t, gMin, gAvg, gMax, cMin, cAvg, cMax, gLim, cLim, fs}]}
    connState: "",
    stopped: false, // after a 401 or 429: asking on with a wrong password would lock this address out
  };

  const $ = (id) => document.getElementById(id);
  const isNum = (v) => typeof v === "number" && isFinite(v);

  // ------------------------------------------------------------------ the API
  class ApiFailure extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // One request at a time: the browser then keeps one connection to the box, not one per poll
  // (the LAN listener allows 16 per address; several pages on one computer share them).
  let queue = Promise.resolve();
  function api(cmd, params, init) {
    const answer = queue.then(() => request(cmd, params, init));
    queue = answer.catch(() => null);
    return answer;
  }

  async function request(cmd, params, init) {
    // location.origin never carries user:password@, which fetch() refuses in a URL
    const url = new URL("/cnf", location.origin);
    url.searchParams.set("cmd", cmd);
    for (const [key, value] of Object.entries(params || {})) url.searchParams.set(key, String(value));
    let response;
    try {
      response = await fetch(url, Object.assign({ cache: "no-store", credentials: "same-origin" }, init || {}));
    } catch (err) {
      throw new ApiFailure(0, "no answer from the controller");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok) throw new ApiFailure(response.status, (body && body.error) || response.statusText);
    return body;
  }

  // ------------------------------------------------------------------ formatting
  function amps(mA, digits) {
    return isNum(mA) ? (mA / 1000).toFixed(digits === undefined ? 1 : digits) + " A" : "—";
  }
  function kw(w) {
    if (!isNum(w)) return "—";
    const k = w / 1000;
    return k.toFixed(Math.abs(k) >= 10 ? 1 : 2) + " kW";
  }
  function kwh(wh) {
    return isNum(wh) ? (wh / 1000).toFixed(2) + " kWh" : "—";
  }
  function two(n) {
    return String(n).padStart(2, "0");
  }
  function clock(date, seconds) {
    return two(date.getHours()) + ":" + two(date.getMinutes()) + (seconds ? ":" + two(date.getSeconds()) : "");
  }
  function when(ts) {
    const date = new Date(ts * 1000);
    const today = new Date();
    const sameDay = date.toDateString() === today.toDateString();
    return (sameDay ? "" : date.getFullYear() + "-" + two(date.getMonth() + 1) + "-" + two(date.getDate()) + " ") +
      clock(date, true);
  }
  function plain(value) {
    if (value === null || value === undefined) return "none";
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  // ------------------------------------------------------------------ DOM helpers
  function h(tag, attrs) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (let i = 2; i < arguments.length; i++) {
      const child = arguments[i];
      if (child !== null && child !== undefined) el.append(child); // a string becomes a text node
    }
    return el;
  }
  function s(tag, attrs) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
    return el;
  }
  function show(el, raw, text) {
    const rawText = raw === null || raw === undefined ? "" : typeof raw === "string" ? raw : JSON.stringify(raw);
    if (el.dataset.raw !== rawText) el.dataset.raw = rawText;
    if (el.textContent !== text) el.textContent = text;
  }
  function field(name, raw, text) {
    const el = h("span", { "data-field": name });
    show(el, raw, text);
    return el;
  }

  // ------------------------------------------------------------------ connection state
  function setConn(kind, text) {
    const conn = $("conn");
    if (state.connState !== kind + text) {
      state.connState = kind + text;
      conn.textContent = text;
      conn.classList.toggle("stale", kind !== "live");
    }
  }

  function failed(err) {
    const lost = $("lost");
    if (err.status === 401 || err.status === 429) state.stopped = true;
    if (err.status === 401) lost.textContent = "Not logged in (any more): reload the page to log in again.";
    else if (err.status === 429) lost.textContent = "Too many failed logins from this address: wait a minute, then reload.";
    else lost.textContent = "No answer from the controller since " + clock(new Date(state.lastCycleAt || Date.now()), true) +
      " (" + err.message + "); trying again every " + state.cycleS + " s.";
    lost.hidden = false;
    setConn("lost", "Connection lost");
  }

  // ------------------------------------------------------------------ get_dev_info
  async function pollDevices() {
    let info;
    try {
      info = await api("get_dev_info");
    } catch (err) {
      failed(err);
      return;
    }
    $("lost").hidden = true;
    renderDevices(info);
  }

  function describeLimit(name) {
    if (/^fuse L[123]$/.test(name)) return "main fuse on " + name.slice(5);
    if (name === "grid_limit_w") return "grid limit";
    if (name === "chargers_limit_w") return "chargers' limit";
    return name;
  }

  function renderDevices(info) {
    const p = info.params;
    const now = Date.now();
    if (p.cycle_count !== state.lastCycle) {
      state.lastCycle = p.cycle_count;
      state.lastCycleAt = now;
    }
    const quietS = (now - state.lastCycleAt) / 1000;
    if (quietS > Math.max(5, 3 * state.cycleS)) setConn("stale", "No new cycle for " + Math.round(quietS) + " s");
    else setConn("live", "Live · " + clock(new Date(p.time * 1000), true));

    $("failsafe").hidden = !p.failsafe;
    show($("failsafe-reason"), p.failsafe, p.failsafe || "");
    const faults = p.faults || [];
    $("faults").hidden = faults.length === 0;
    const list = $("fault-list");
    if (list.dataset.raw !== JSON.stringify(faults)) {
      list.dataset.raw = JSON.stringify(faults);
      list.replaceChildren.apply(list, faults.map((f) => h("li", null, f)));
    }

    show($("grid-power"), p.grid_power_w, kw(p.grid_power_w));
    renderPhases(p);
    show($("grid-limit"), p.grid_limit_w, isNum(p.grid_limit_w) ? kw(p.grid_limit_w) : "none");
    show($("chargers-limit"), p.chargers_limit_w, isNum(p.chargers_limit_w) ? kw(p.chargers_limit_w) : "none");
    show($("power-headroom"), p.power_headroom_w, isNum(p.power_headroom_w) ? kw(p.power_headroom_w) : "no limit");
    show($("max-total-current"), p.max_total_current, amps(p.max_total_current));
    const limiting = p.limiting || [];
    show($("limiting"), limiting, limiting.length ? limiting.map(describeLimit).join(", ")
      : "nothing: each charger gets what its car and its maximum allow");

    renderChargers(info.devices.filter((d) => d.is_evse));
    renderInputs(info.inputs || []);
    show($("version"), p.version, "gridcharge " + p.version);
    show($("cycle-count"), p.cycle_count, String(p.cycle_count));
    show($("cycle-time"), p.cycle_time, isNum(p.cycle_time) ? p.cycle_time + " ms" : "—");
    show($("overruns"), p.overruns, String(p.overruns));
  }

  function renderPhases(p) {
    const box = $("phases");
    const fuse = p.main_fuse_cur;
    if (!box.children.length) {
      for (const n of [1, 2, 3]) {
        box.append(h("div", { class: "phase" },
          h("span", { class: "phase-name", id: "phase-l" + n }, "L" + n),
          h("div", { class: "bar", role: "meter", "aria-labelledby": "phase-l" + n, "aria-valuemin": 0 },
            h("div", { class: "bar-fill" }), h("div", { class: "bar-fuse" })),
          h("span", { class: "phase-value", "data-field": "grid_current_l" + n })));
      }
    }
    for (const n of [1, 2, 3]) {
      const row = box.children[n - 1];
      const current = p["grid_current_l" + n];
      const text = isNum(current) ? amps(current) + (isNum(fuse) ? " of " + amps(fuse, 0) : "") : "no reading";
      show(row.querySelector(".phase-value"), current, text);
      const scale = Math.max(isNum(fuse) ? fuse : 0, isNum(current) ? current : 0) || 1;
      const fill = row.querySelector(".bar-fill");
      fill.style.width = (isNum(current) ? Math.max(0, current) / scale * 100 : 0).toFixed(2) + "%";
      const ratio = isNum(current) && isNum(fuse) && fuse > 0 ? current / fuse : 0;
      fill.classList.toggle("high", ratio >= 0.9 && ratio <= 1);
      fill.classList.toggle("over", ratio > 1);
      const mark = row.querySelector(".bar-fuse");
      mark.hidden = !isNum(fuse);
      if (isNum(fuse)) mark.style.left = "calc(" + (fuse / scale * 100).toFixed(2) + "% - 3px)";
      const bar = row.querySelector(".bar");
      bar.setAttribute("aria-valuenow", isNum(current) ? (current / 1000).toFixed(1) : "0");
      bar.setAttribute("aria-valuemax", ((isNum(fuse) ? fuse : scale) / 1000).toFixed(1));
      bar.setAttribute("aria-valuetext", text);
    }
    $("fuse-note").textContent = isNum(fuse)
      ? "The black mark is the main fuse: " + amps(fuse, 0) + " per phase."
      : "The main fuse is not known.";
  }

  function stateClass(d) {
    if (d.state === 6 || d.iec_state === null) return "offline";
    return { C: "charging", D: "charging", B: "connected", E: "error", F: "error" }[d.iec_state] || "";
  }

  function chargerCard(d) {
    const currents = h("div", { class: "currents", role: "group", "aria-label": "Current per phase" });
    for (const n of [1, 2, 3]) {
      const key = "current_l" + n;
      currents.append(h("div", null, h("span", { class: "ph" }, "L" + n),
        h("span", { class: "v" }, field(key, d[key], amps(d[key])))));
    }
    const facts = h("dl", null,
      h("dt", null, "Power"), h("dd", null, field("cur_charging_power", d.cur_charging_power, kw(d.cur_charging_power))),
      h("dt", null, "Limit"), h("dd", null,
        field("assigned_cur", d.assigned_cur, d.paused ? "paused (0 A)" : amps(d.assigned_cur)), " — ",
        field("lreason", d.lreason, d.lreason)),
      h("dt", null, "Written"), h("dd", null, field("last_set_charging_cur", d.last_set_charging_cur,
        d.last_set_charging_cur < 0 ? "nothing yet" : amps(d.last_set_charging_cur))),
      h("dt", null, "Session"), h("dd", null, field("session_energy", d.session_energy,
        isNum(d.session_energy) ? kwh(d.session_energy) : "—")),
      h("dt", null, "Range"), h("dd", null, amps(d.min_charging_cur) + " to " + amps(d.max_charging_cur)));
    if (!d.charging_enabled || d.override_cur !== null) {
      facts.append(h("dt", null, "Override"), h("dd", null, field("override_cur", d.override_cur,
        !d.charging_enabled ? "charging disabled" : "at most " + amps(d.override_cur))));
    }
    const title = "charger-" + d.dev_id;
    return h("article", { class: "charger", "data-dev": d.dev_id, "aria-labelledby": title },
      h("div", { class: "charger-head" },
        h("h3", { id: title }, d.dev_id + " ", h("span", { class: "model" }, d.model)),
        h("span", { class: "state " + stateClass(d) }, field("state_text", d.state_text, d.state_text))),
      currents, facts,
      d.com_err ? h("p", { class: "err" }, d.last_error + " (for " + d.com_err_secs + " s)") : null);
  }

  function renderChargers(chargers) {
    const box = $("chargers");
    const key = JSON.stringify(chargers.map((d) => [d.dev_id, d.current_l1, d.current_l2, d.current_l3,
      d.cur_charging_power, d.assigned_cur, d.lreason, d.last_set_charging_cur, d.session_energy, d.state_text,
      d.min_charging_cur, d.max_charging_cur, d.charging_enabled, d.override_cur, d.com_err, d.com_err_secs,
      d.last_error, d.paused]));
    if (box.dataset.raw === key) return; // nothing changed: leave the DOM alone
    box.dataset.raw = key;
    if (!chargers.length) box.replaceChildren(h("p", { class: "note" }, "No chargers in this cycle."));
    else box.replaceChildren.apply(box, chargers.map(chargerCard));
  }

  function renderInputs(inputs) {
    const list = $("inputs");
    const key = JSON.stringify(inputs);
    if (list.dataset.raw === key) return;
    list.dataset.raw = key;
    if (!inputs.length) {
      list.replaceChildren(h("li", { class: "note" }, "None configured"));
      return;
    }
    list.replaceChildren.apply(list, inputs.map((i) => h("li", { "data-dev": i.id },
      h("span", { class: "label" }, i.id),
      h("span", { class: "input-state" + (i.active ? " on" : "") }, field("active", i.active,
        i.active === null ? "unreadable" : i.active ? "ACTIVE (contact closed)" : "not active")),
      i.com_err ? h("span", { class: "err" }, i.last_error) : null)));
  }

  // ------------------------------------------------------------------ variables
  function exprText(expr) {
    return typeof expr === "string" ? expr : JSON.stringify(expr);
  }

  function varMessage(form, kind, text) {
    const msg = form.querySelector(".msg");
    msg.className = "msg " + kind;
    msg.textContent = text;
  }

  function varForm(name) {
    const id = "var-" + name;
    const input = h("input", { id: id, name: "expr", type: "text", autocomplete: "off", autocapitalize: "off",
      spellcheck: "false", "aria-describedby": id + "-msg" });
    const form = h("form", { class: "var", "data-name": name, novalidate: true },
      h("label", { for: id }, h("span", null, name), h("span", { class: "val", "data-field": "val" })),
      input,
      h("button", { type: "submit" }, "Set"),
      h("p", { id: id + "-msg", class: "msg", "aria-live": "polite" }));
    input.addEventListener("input", () => {
      form.dataset.dirty = "1";
    });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      setVariable(form);
    });
    return form;
  }

  function renderVars(body) {
    const box = $("vars");
    const names = new Set();
    for (const v of body.vars) {
      names.add(v.name);
      let form = box.querySelector('form[data-name="' + CSS.escape(v.name) + '"]');
      if (!form) form = varForm(v.name);
      box.append(form); // in the API's order (by name); an existing form just moves
      const input = form.querySelector("input");
      form.dataset.expr = JSON.stringify(v.expr);
      if (!form.dataset.dirty && document.activeElement !== input) input.value = exprText(v.expr);
      const val = form.querySelector(".val");
      show(val, v.val, v.error ? "error: " + v.error : "now " + plain(v.val));
    }
    for (const form of Array.from(box.querySelectorAll("form.var"))) {
      if (!names.has(form.dataset.name) && !form.contains(document.activeElement)) form.remove();
    }
    if (!body.vars.length) box.replaceChildren(h("p", { class: "note" }, "No variables."));
  }

  async function pollVars() {
    try {
      renderVars(await api("get_cm_vars"));
    } catch (err) {
      if (err.status === 401 || err.status === 429) failed(err);
    }
  }

  async function setVariable(form) {
    const name = form.dataset.name;
    const input = form.querySelector("input");
    const button = form.querySelector("button");
    const text = input.value.trim();
    const expr = text === "true" ? true : text === "false" ? false : text; // numbers: the API reads "50" as 50
    button.disabled = true;
    varMessage(form, "", "Setting…");
    try {
      const body = await api("set_cm_vars", {}, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ vars: [{ name: name, expr: expr }] }),
      });
      delete form.dataset.dirty;
      input.removeAttribute("aria-invalid");
      renderVars(body);
      if (body.saved === false) varMessage(form, "warn", "Acts now, but NOT saved: saving fails (see Faults).");
      else varMessage(form, "ok", "Set to " + exprText(expr) + ".");
      pollDevices();
    } catch (err) {
      input.setAttribute("aria-invalid", "true");
      varMessage(form, "error", err.status ? "Not set: " + err.message : "Not set: " + err.message + ".");
    } finally {
      button.disabled = false;
    }
  }

  // ------------------------------------------------------------------ grid signals
  function signalChange(e) {
    const value = (v) => {
      if (e.kind === "limit" && isNum(v)) return kw(v);
      if (e.kind === "input" && typeof v === "boolean") return v ? "active" : "not active";
      if (e.kind === "failsafe" && v === null) return "off";
      return plain(v);
    };
    return value(e.old) + " → " + value(e.new);
  }

  async function pollSignals() {
    const body = $("signals").tBodies[0];
    let events;
    try {
      events = (await api("get_grid_log", { order: "newest", limit: SIGNALS_SHOWN })).events;
    } catch (err) {
      if (err.status === 401 || err.status === 429) failed(err);
      body.replaceChildren(h("tr", null, h("td", { colspan: 4 }, "The grid log cannot be read now: " + err.message)));
      return;
    }
    const key = JSON.stringify(events);
    if (body.dataset.raw === key) return;
    body.dataset.raw = key;
    if (!events.length) {
      body.replaceChildren(h("tr", null, h("td", { colspan: 4 }, "No signals recorded yet.")));
      return;
    }
    body.replaceChildren.apply(body, events.map((e) => h("tr", null,
      h("td", { "data-label": "Time" }, h("time", { datetime: e.time }, when(e.ts))),
      h("td", { "data-label": "Signal" }, e.kind === e.name ? e.kind : e.kind + " " + e.name),
      h("td", { "data-label": "Change" }, signalChange(e)),
      h("td", { "data-label": "From" }, e.source))));
  }

  // ------------------------------------------------------------------ 24 h history
  function points(body) {
    const out = [];
    for (let i = 0; i < body.t.length; i++) {
      out.push({
        t: body.t[i],
        gMin: body.grid_w.min[i], gAvg: body.grid_w.avg[i], gMax: body.grid_w.max[i],
        cMin: body.chargers_w.min[i], cAvg: body.chargers_w.avg[i], cMax: body.chargers_w.max[i],
        gLim: body.grid_limit_w[i], cLim: body.chargers_limit_w[i], fs: body.failsafe[i],
      });
    }
    return out;
  }

  async function pollHistory() {
    const have = state.history && state.history.points.length ? state.history.points : null;
    const since = have ? have[have.length - 1].t : null; // the last bucket was still filling: ask for it again
    let body;
    try {
      body = await api("get_history", since === null ? {} : { from: since });
    } catch (err) {
      if (err.status === 401 || err.status === 429) failed(err);
      $("chart-summary").textContent = "The history cannot be read now: " + err.message;
      return;
    }
    if (isNum(body.cycle_s) && body.cycle_s > 0) state.cycleS = body.cycle_s;
    state.bucketS = body.bucket_s;
    state.spanS = body.span_s;
    const fresh = points(body);
    let all = have ? have.filter((p) => p.t < (since === null ? Infinity : since)).concat(fresh) : fresh;
    all = all.filter((p) => p.t >= body.now - body.span_s - body.bucket_s);
    state.history = { now: body.now, points: all };
    drawChart();
  }

  function niceStep(range, ticks) {
    const raw = range / ticks;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * power >= raw) return m * power;
    return 10 * power;
  }

  function drawChart() {
    const box = $("chart");
    const hist = state.history;
    if (!hist) return;
    const width = Math.max(280, Math.round(box.clientWidth || 600));
    const height = width < 600 ? 230 : 320;
    const pad = { l: 54, r: 12, t: 12, b: 28 };
    // the last 24 h, or less while the history is younger (it starts with the controller)
    const t1 = hist.now;
    const firstT = hist.points.length ? hist.points[0].t : t1;
    const t0 = Math.min(t1 - MIN_CHART_S, Math.max(t1 - state.spanS, firstT));
    const pts = hist.points.filter((p) => p.t + state.bucketS > t0);
    const values = [];
    for (const p of pts) for (const v of [p.gMin, p.gMax, p.cMax, p.gLim, p.cLim]) if (isNum(v)) values.push(v);
    let yMax = Math.max(1000, ...values);
    let yMin = Math.min(0, ...values);
    const step = niceStep(yMax - yMin, width < 600 ? 4 : 6);
    yMax = Math.ceil(yMax * 1.04 / step) * step;
    yMin = Math.floor(yMin / step) * step;
    const x = (t) => pad.l + (Math.min(Math.max(t, t0), t1) - t0) / (t1 - t0) * (width - pad.l - pad.r);
    const y = (v) => pad.t + (yMax - v) / (yMax - yMin) * (height - pad.t - pad.b);
    const svg = s("svg", { viewBox: "0 0 " + width + " " + height, width: width, height: height, role: "img",
      "aria-labelledby": "chart-title chart-desc" });
    const title = s("title", { id: "chart-title" });
    title.textContent = "Grid power, chargers' power and the limits in force over the last 24 hours";
    const desc = s("desc", { id: "chart-desc" });
    svg.append(title, desc);

    const axis = s("g", { class: "axis" });
    for (let v = yMin; v <= yMax + step / 2; v += step) {
      axis.append(s("line", { class: "gridline", x1: pad.l, x2: width - pad.r, y1: y(v), y2: y(v) }));
      const label = s("text", { x: pad.l - 6, y: y(v) + 4, "text-anchor": "end" });
      label.textContent = (v / 1000).toFixed(step < 1000 ? 1 : 0) + " kW";
      axis.append(label);
    }
    const most = width < 600 ? 4 : 8;
    const tickS = TICK_STEPS_S.find((step) => (t1 - t0) / step <= most) || TICK_STEPS_S[TICK_STEPS_S.length - 1];
    for (let t = Math.ceil(t0 / 60) * 60; t <= t1; t += 60) { // whole local minutes that are a multiple of the step
      const d = new Date(t * 1000);
      if ((d.getHours() * 60 + d.getMinutes()) % (tickS / 60) !== 0) continue;
      const tx = x(t);
      if (tx < pad.l + 14 || tx > width - pad.r - 14) continue;
      axis.append(s("line", { class: "gridline", x1: tx, x2: tx, y1: pad.t, y2: height - pad.b }));
      const label = s("text", { x: tx, y: height - 8, "text-anchor": "middle" });
      label.textContent = clock(d, false);
      axis.append(label);
    }
    svg.append(axis);

    const half = state.bucketS / 2;
    for (const p of pts) {
      if (p.fs) {
        svg.append(s("rect", { class: "failsafe", x: x(p.t), y: pad.t, width: Math.max(1, x(p.t + state.bucketS) - x(p.t)),
          height: height - pad.t - pad.b }));
      }
    }
    // runs of buckets without a gap (a missing bucket or an unknown value breaks a line)
    const runs = (get) => {
      const out = [];
      let run = [];
      let last = null;
      for (const p of pts) {
        const v = get(p);
        if (!isNum(v) || (last !== null && p.t - last > 1.5 * state.bucketS)) {
          if (run.length) out.push(run);
          run = [];
        }
        if (isNum(v)) run.push(p);
        last = p.t;
      }
      if (run.length) out.push(run);
      return out;
    };
    const band = runs((p) => p.gMax).map((run) => {
      const upper = run.map((p) => x(p.t + half).toFixed(1) + "," + y(p.gMax).toFixed(1));
      const lower = run.slice().reverse().map((p) => x(p.t + half).toFixed(1) + "," + y(isNum(p.gMin) ? p.gMin : p.gMax).toFixed(1));
      return "M" + upper.concat(lower).join("L") + "Z";
    }).join("");
    if (band) svg.append(s("path", { class: "band", d: band }));
    const line = (get, cls) => {
      const d = runs(get).map((run) => (run.length === 1 // a lone bucket: a dash across it
        ? "M" + x(run[0].t).toFixed(1) + "," + y(get(run[0])).toFixed(1) + "H" + x(run[0].t + state.bucketS).toFixed(1)
        : "M" + run.map((p) => x(p.t + half).toFixed(1) + "," + y(get(p)).toFixed(1)).join("L"))).join("");
      if (d) svg.append(s("path", { class: "line " + cls, d: d }));
    };
    const steps = (get, cls) => {
      const d = runs(get).map((run) => run.map((p, i) => (i ? "L" : "M") + x(p.t).toFixed(1) + "," + y(get(p)).toFixed(1) +
        "H" + x(p.t + state.bucketS).toFixed(1)).join("")).join("");
      if (d) svg.append(s("path", { class: "line " + cls, d: d }));
    };
    steps((p) => p.gLim, "grid-limit");
    steps((p) => p.cLim, "chargers-limit");
    line((p) => p.cAvg, "chargers");
    line((p) => p.gAvg, "grid");

    const known = pts.filter((p) => isNum(p.gMax));
    let summary = "No readings of the grid power in the last 24 hours yet.";
    if (known.length) {
      const top = known.reduce((a, b) => (b.gMax > a.gMax ? b : a));
      const last = known[known.length - 1];
      summary = "Grid power lately " + kw(last.gAvg) + "; the highest in 24 hours " + kw(top.gMax) + " at " +
        clock(new Date(top.t * 1000), false) + ".";
    }
    if (t1 - t0 < state.spanS - state.bucketS) {
      summary += " The history starts at " + clock(new Date(t0 * 1000), false) +
        ": it is kept in memory since the controller started, 24 hours at most.";
    }
    desc.textContent = summary;
    $("chart-summary").textContent = summary;
    box.replaceChildren(svg);
  }

  // ------------------------------------------------------------------ scheduling
  function every(seconds, poll) {
    let timer = null;
    let busy = false;
    const run = async () => {
      clearTimeout(timer);
      if (busy) return;
      busy = true;
      const started = Date.now();
      try {
        if (!document.hidden && !state.stopped) await poll();
      } finally {
        busy = false;
        if (!state.stopped) timer = setTimeout(run, Math.max(100, seconds() * 1000 - (Date.now() - started)));
      }
    };
    return run;
  }

  const polls = [
    every(() => state.bucketS, pollHistory),
    every(() => state.cycleS, pollDevices),
    every(() => VARS_EVERY_S, pollVars),
    every(() => SIGNALS_EVERY_S, pollSignals),
  ];
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) polls.forEach((run) => run());
  });
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(drawChart, 150);
  });
  polls.forEach((run) => run());
})();
