// BHIV console: plain JavaScript, no dependencies, every text node set with textContent.
"use strict";

const state = {
  view: "pipeline",
  arg: "",
  pipeline: null,
  newestEvent: undefined,
  karmaUpdates: undefined,
  seenEvents: null,      // event ids already shown (null until the first load)
  lastQ: null,           // "role|action" -> value at the previous render
  changedAt: {},         // "role|action" -> when the value last changed (ms)
  stuckKey: "",
};

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "onclick") el.addEventListener("click", value);
    else if (key.startsWith("data-")) el.setAttribute(key, String(value));
    else el[key] = value;
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => null);
  return { status: response.status, body };
}

function fmt(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(2);
  return String(value);
}

function shortTime(iso) {
  if (!iso) return "–";
  const text = String(iso);
  return text.length >= 19 ? text.slice(11, 23).replace(/[Z+]$/, "") : text;
}

function traceLink(traceId) {
  if (!traceId) return "–";
  return h("a", { href: "#trace/" + encodeURIComponent(traceId), class: "mono" }, traceId);
}

function userLink(userId) {
  if (!userId) return "–";
  return h("a", { href: "#karma/" + encodeURIComponent(userId), class: "mono" }, userId);
}

function badge(text, kind) {
  return h("span", { class: "badge " + (kind || text) }, text);
}

// --- routing ---------------------------------------------------------------------------------

function route() {
  const hash = decodeURIComponent(location.hash.replace(/^#/, ""));
  const [view, ...rest] = hash.split("/");
  state.view = ["pipeline", "events", "trace", "karma", "stuck"].includes(view) ? view : "pipeline";
  state.arg = rest.join("/");
  for (const section of document.querySelectorAll(".view")) {
    section.classList.toggle("active", section.id === "view-" + state.view);
  }
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.view === state.view);
  }
  refreshView();
}

function refreshView() {
  if (state.view === "pipeline") renderPipeline();
  if (state.view === "events") loadEvents();
  if (state.view === "trace") loadTrace();
  if (state.view === "karma") loadKarma();
  if (state.view === "stuck") loadStuck();
}

// --- pipeline --------------------------------------------------------------------------------

function metric(label, value, warn) {
  return [h("dt", {}, label), h("dd", { class: warn ? "warn" : "", "data-metric": label }, fmt(value))];
}

function serviceNode(service, extra) {
  return h(
    "div",
    { class: "node " + service.health, "data-node": service.name },
    h("h4", {}, service.name, badge(service.health)),
    h("dl", {}, metric(service.rate_unit, service.rate), extra),
  );
}

function mappingNode(mapping) {
  return h(
    "div",
    { class: "node mapping", "data-node": mapping.function },
    h("h4", {}, "stream → " + mapping.target, badge(mapping.running ? "up" : "down")),
    h(
      "dl",
      {},
      metric("events/s", mapping.rate),
      metric("stream lag", mapping.lag, mapping.lag > 100),
      metric("handled", mapping.handled),
      metric("DLQ depth", mapping.dlq_depth, mapping.dlq_depth > 0),
    ),
  );
}

function arrow(label) {
  return h("div", { class: "arrow" }, "→", label ? h("small", {}, label) : null);
}

function renderPipeline() {
  const flow = document.getElementById("flow");
  const p = state.pipeline;
  if (!p) {
    getJSON("/api/pipeline").then(({ body }) => { if (body) onPipeline(body); });
    return;
  }
  const byName = Object.fromEntries(p.services.map((s) => [s.name, s]));
  const byFunction = Object.fromEntries(p.mappings.map((m) => [m.function, m]));
  const executor = byName.executor, bucket = byName.bucket, karma = byName.karma;
  const nodes = [
    serviceNode(executor, [metric("outbox depth", executor.outbox_depth, executor.outbox_depth > 0),
                           metric("bucket reachable", executor.bucket_reachable ? "yes" : "no", !executor.bucket_reachable)]),
    arrow("outbox"),
    serviceNode(bucket, [metric("events received", bucket.events_received)]),
    arrow("events stream"),
  ];
  const karmaMapping = byFunction.KarmaStreamFunction;
  const statsMapping = byFunction.BucketStatsFunction;
  nodes.push(karmaMapping ? mappingNode(karmaMapping) : h("div"));
  nodes.push(arrow(""));
  nodes.push(serviceNode(karma, [
    metric("applied", (karma.events || {}).applied),
    metric("ignored", (karma.events || {}).ignored),
    metric("failed", (karma.events || {}).failed, ((karma.events || {}).failed || 0) > 0),
    metric("users", karma.users),
    metric("DLQ depth", karma.dlq_depth, karma.dlq_depth > 0),
  ]));
  // second row: the Bucket's own stats consumer, under the Karma mapping
  nodes.push(h("div"), h("div"), h("div"), arrow("events stream"));
  nodes.push(statsMapping ? mappingNode(statsMapping) : h("div"));
  flow.replaceChildren(...nodes);
}

function onPipeline(snapshot) {
  state.pipeline = snapshot;
  if (state.view === "pipeline") renderPipeline();
  if (snapshot.newest_event_id !== state.newestEvent) {
    const first = state.newestEvent === undefined;
    state.newestEvent = snapshot.newest_event_id;
    if (!first && state.view === "events") loadEvents();
    if (!first && state.view === "trace") loadTrace();
  }
  if (snapshot.karma_updates !== state.karmaUpdates) {
    const first = state.karmaUpdates === undefined;
    state.karmaUpdates = snapshot.karma_updates;
    if (!first && state.view === "karma") loadKarma();
    if (!first && state.view === "trace") loadTrace();
  }
  const stuckKey = JSON.stringify([snapshot.services[0].outbox_depth, snapshot.mappings.map((m) => m.dlq_depth)]);
  if (stuckKey !== state.stuckKey) {
    state.stuckKey = stuckKey;
    if (state.view === "stuck") loadStuck();
  }
}

// --- events ----------------------------------------------------------------------------------

function eventFilters() {
  const form = document.getElementById("event-filters");
  const params = new URLSearchParams();
  for (const input of form.querySelectorAll("input")) {
    if (input.value.trim()) params.set(input.name, input.value.trim());
  }
  params.set("limit", "50");
  return params;
}

async function loadEvents() {
  const { status, body } = await getJSON("/api/events?" + eventFilters());
  const error = document.getElementById("events-error");
  const tbody = document.querySelector("#events-table tbody");
  if (status !== 200) {
    error.hidden = false;
    error.textContent = ((body || {}).error || {}).message || "The Bucket answered " + status;
    tbody.replaceChildren();
    return;
  }
  error.hidden = true;
  const firstLoad = state.seenEvents === null;
  const seen = state.seenEvents || new Set();
  const rows = body.events.map((event) => {
    const fresh = !firstLoad && !seen.has(event.event_id);
    seen.add(event.event_id);
    return h(
      "tr",
      { class: fresh ? "new" : "", "data-event-id": event.event_id },
      h("td", { class: "mono" }, shortTime(event.received_at)),
      h("td", {}, event.event_type),
      h("td", {}, event.requester_id),
      h("td", {}, traceLink(event.trace_id)),
      h("td", {}, userLink(event.user_id)),
      h("td", { class: "mono" }, event.event_id),
    );
  });
  state.seenEvents = seen;
  if (!rows.length) rows.push(h("tr", {}, h("td", { colSpan: 6 }, "No events match.")));
  tbody.replaceChildren(...rows);
}

// --- trace -----------------------------------------------------------------------------------

function millis(iso) {
  const value = Date.parse(iso);
  return Number.isNaN(value) ? null : value;
}

async function loadTrace() {
  const target = document.getElementById("trace-result");
  const input = document.querySelector("#trace-form input");
  if (!state.arg) {
    target.replaceChildren(h("p", { class: "hint" }, "Enter a trace id, or click one in Events."));
    return;
  }
  if (document.activeElement !== input) input.value = state.arg;
  const { status, body } = await getJSON("/api/trace/" + encodeURIComponent(state.arg));
  if (status !== 200) {
    target.replaceChildren(h("p", { class: "error" }, "Could not read the trace (" + status + ")"));
    return;
  }
  if (!body.found) {
    target.replaceChildren(h("p", {}, "Nothing is known about trace ", h("span", { class: "mono" }, body.trace_id), " yet."));
    return;
  }
  const times = body.hops.flatMap((hop) => [millis(hop.start), millis(hop.end)]).filter((t) => t !== null);
  const t0 = Math.min(...times), t1 = Math.max(...times);
  const span = Math.max(t1 - t0, 1);
  const rows = body.hops.map((hop) => {
    const start = millis(hop.start), end = millis(hop.end) ?? start;
    const bar = h("div", { class: "bar" });
    let took = "";
    if (start !== null) {
      bar.style.left = ((start - t0) / span) * 100 + "%";
      bar.style.width = Math.max(((end - start) / span) * 100, 0.6) + "%";
      took = (end - start).toFixed(1) + " ms";
    } else {
      bar.hidden = true;
    }
    const logs = hop.logs.length
      ? h(
          "details",
          { open: hop.state === "failed" },
          h("summary", {}, hop.logs.length + " log line(s)"),
          hop.logs.map((line) =>
            h("pre", {}, `${shortTime(line.at)} ${line.service} ${line.level} ${line.message}  ${JSON.stringify(line.fields)}`),
          ),
        )
      : null;
    return h(
      "div",
      { class: "hop " + hop.state, "data-hop": hop.hop, "data-state": hop.state },
      h("span", { class: "name" }, hop.hop),
      badge(hop.state),
      h("div", { class: "track" }, bar),
      h("span", { class: "took" }, took),
      h("div", { class: "detail" }, hop.detail || ""),
      logs,
    );
  });
  const failed = body.hops.find((hop) => hop.state === "failed");
  target.replaceChildren(
    h("p", {}, "Trace ", h("span", { class: "mono" }, body.trace_id), ": ",
      failed ? h("strong", { class: "error" }, "FAILED at hop '" + failed.hop + "'") : "no failed hop",
      times.length ? ` · ${(t1 - t0).toFixed(1)} ms from first to last hop` : ""),
    h("div", { class: "hops" }, rows),
  );
}

// --- karma -----------------------------------------------------------------------------------

function heatColour(value, scale) {
  if (!value) return "transparent";
  const alpha = Math.min(Math.abs(value) / scale, 1) * 0.85 + 0.1;
  return value > 0 ? `rgba(21, 128, 61, ${alpha})` : `rgba(185, 28, 28, ${alpha})`;
}

function renderHeatmap(q, highlightRole) {
  const scale = Math.max(1e-9, ...q.values.flat().map(Math.abs));
  const now = Date.now();
  const current = {};
  const head = h("tr", {}, h("th", {}, "role \\ action"), q.actions.map((a) => h("th", { class: "action" }, a)));
  const rows = q.states.map((role, r) =>
    h(
      "tr",
      {},
      h("th", {}, role === highlightRole ? "▶ " + role : role),
      q.actions.map((action, c) => {
        const value = q.values[r][c];
        const key = role + "|" + action;
        current[key] = value;
        if (state.lastQ && state.lastQ[key] !== undefined && state.lastQ[key] !== value) state.changedAt[key] = now;
        const changed = state.changedAt[key] && now - state.changedAt[key] < 15000;
        const cell = h(
          "td",
          { class: changed ? "changed" : "", "data-role": role, "data-action": action, "data-value": value, title: `${role} × ${action}: ${value}` },
          value.toFixed(2),
        );
        cell.style.background = heatColour(value, scale);
        if (Math.abs(value) / scale > 0.55) cell.style.color = "#fff";
        return cell;
      }),
    ),
  );
  state.lastQ = current;
  return h("table", { class: "heatmap" }, h("thead", {}, head), h("tbody", {}, rows));
}

async function loadKarma() {
  const user = state.arg;
  const { body } = await getJSON("/api/karma" + (user ? "?user_id=" + encodeURIComponent(user) : ""));
  if (!body) return;
  const q = body.qtable;
  document.getElementById("policy").textContent =
    `policy ${q.policy_version} · ${q.updates} updates · alpha ${q.alpha} · gamma ${q.gamma}`;
  document.getElementById("heatmap").replaceChildren(renderHeatmap(q, body.user && body.user.role));
  document.querySelector("#top-users tbody").replaceChildren(
    ...(body.top.length
      ? body.top.map((u) => h("tr", { "data-user": u.user_id }, h("td", {}, userLink(u.user_id)), h("td", {}, u.role), h("td", {}, fmt(u.merit))))
      : [h("tr", {}, h("td", { colSpan: 3 }, "No users yet."))]),
  );
  const card = document.getElementById("user-card");
  const input = document.querySelector("#user-form input");
  if (user && document.activeElement !== input) input.value = user;
  if (!user) {
    card.replaceChildren();
  } else if (!body.user) {
    card.replaceChildren(h("div", { class: "card error" }, body.user_error || "Unknown user"));
  } else {
    const u = body.user;
    card.replaceChildren(
      h(
        "div",
        { class: "card", "data-user-card": u.user_id },
        h("h3", {}, u.user_id, " ", badge(u.role, "skipped"), " merit ", fmt(u.merit_score)),
        h("p", {}, "balances: ", Object.entries(u.balances).map(([k, v]) => `${k} ${fmt(v)}`).join(", ")),
        h("p", {}, "actions: ", Object.entries(u.action_stats).map(([k, v]) => `${k} ×${v}`).join(", ") || "none"),
        h(
          "table",
          {},
          h("thead", {}, h("tr", {}, ["applied", "event", "action", "reward", "role", "Q before → after"].map((t) => h("th", {}, t)))),
          h(
            "tbody",
            {},
            body.history.map((e) =>
              h(
                "tr",
                {},
                h("td", { class: "mono" }, shortTime(e.applied_at)),
                h("td", { class: "mono" }, e.event_type),
                h("td", {}, e.action),
                h("td", {}, fmt(e.reward)),
                h("td", {}, e.role_before === e.role_after ? e.role_after : `${e.role_before} → ${e.role_after}`),
                h("td", {}, `${fmt(e.q_before)} → ${fmt(e.q_after)}`),
              ),
            ),
          ),
        ),
      ),
    );
  }
}

// --- stuck work ------------------------------------------------------------------------------

async function loadStuck() {
  const { body } = await getJSON("/api/stuck");
  if (!body) return;
  document.querySelector("#dlq-table tbody").replaceChildren(
    ...(body.dlq.length
      ? body.dlq.map((m) =>
          h(
            "tr",
            { "data-message-id": m.message_id },
            h("td", { class: "mono" }, shortTime(m.sent_at)),
            h("td", {}, m.queue),
            h("td", { class: "error" }, m.reason),
            h("td", {}, fmt(m.attempts)),
            h("td", {}, m.events.map((e) => h("div", { class: "mono", "data-event-id": e.event_id }, `${e.event_type} ${e.event_id} `, e.trace_id ? traceLink(e.trace_id) : ""))),
          ),
        )
      : [h("tr", {}, h("td", { colSpan: 5 }, "Nothing dead-lettered."))]),
  );
  document.querySelector("#outbox-table tbody").replaceChildren(
    ...(body.outbox.length
      ? body.outbox.map((item) =>
          h(
            "tr",
            { "data-trace-id": item.trace_id },
            h("td", {}, traceLink(item.trace_id)),
            h("td", { class: "mono" }, item.event_id),
            h("td", { class: "mono" }, shortTime(item.created_at)),
            h("td", {}, fmt(item.delivery_attempts)),
            h("td", { class: "error" }, item.last_error || ""),
            h("td", { class: "mono" }, shortTime(item.next_attempt_at)),
          ),
        )
      : [h("tr", {}, h("td", { colSpan: 6 }, "Nothing waiting."))]),
  );
}

// --- live feed -------------------------------------------------------------------------------

function connect() {
  const live = document.getElementById("live");
  const source = new EventSource("/api/live");
  source.addEventListener("open", () => { live.textContent = "live"; live.className = "live on"; });
  source.addEventListener("pipeline", (message) => onPipeline(JSON.parse(message.data)));
  source.addEventListener("error", () => { live.textContent = "reconnecting"; live.className = "live off"; });
}

document.getElementById("event-filters").addEventListener("submit", (e) => { e.preventDefault(); state.seenEvents = null; loadEvents(); });
document.getElementById("event-filters").addEventListener("reset", () => setTimeout(() => { state.seenEvents = null; loadEvents(); }));
document.getElementById("trace-form").addEventListener("submit", (e) => {
  e.preventDefault();
  location.hash = "#trace/" + encodeURIComponent(e.target.trace_id.value.trim());
});
document.getElementById("user-form").addEventListener("submit", (e) => {
  e.preventDefault();
  location.hash = "#karma/" + encodeURIComponent(e.target.user_id.value.trim());
});
window.addEventListener("hashchange", route);
route();
connect();
