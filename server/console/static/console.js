// Switchyard console: one page, four sections, the same HTTP API any client uses.
// Every call carries the console header; the session cookie goes with it (same origin). A refusal shows
// the server's own error message, verbatim.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#0b5cad", "#d4700a", "#116329", "#8250df", "#bf3989", "#1b7c83", "#9a6700", "#57606a",
                 "#cf222e", "#4d2d00"];
const $ = (id) => document.getElementById(id);
let expertKinds = {};
let liveTimer = null;

class ApiError extends Error {}

async function api(path, options = {}) {
  const headers = {"X-Switchyard-Console": "1", ...(options.headers || {})};
  let body = options.body;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(options.json);
  }
  const response = await fetch(path, {method: options.method || "GET", headers, body,
                                      credentials: "same-origin"});
  if (response.status === 401 && !path.startsWith("/v1/")) {
    window.location.assign("/console/login");
  }
  if (options.raw) {
    if (!response.ok) throw new ApiError(await errorText(response));
    return response;
  }
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(data && data.error ? data.error.message : `HTTP ${response.status}`);
  return data;
}

async function errorText(response) {
  try {
    const data = await response.json();
    return data.error.message;
  } catch (_) {
    return `HTTP ${response.status}`;
  }
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "text") node.textContent = value;
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attributes = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function clearChart(chart) {
  for (const node of [...chart.childNodes]) if (node.nodeName !== "title") node.remove();
}

const fmt = (value, digits = 3) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));
const plural = (n, noun) => `${n} ${noun}${n === 1 ? "" : "s"}`;
const pct = (value) => (value === null || value === undefined ? "–" : `${(100 * value).toFixed(1)}%`);

// -- navigation ---------------------------------------------------------------------------------

function show() {
  const current = (window.location.hash || "#experts").slice(1);
  for (const section of document.querySelectorAll("main > section")) section.hidden = section.id !== current;
  for (const link of document.querySelectorAll("header nav a")) {
    if (link.getAttribute("href") === `#${current}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  clearInterval(liveTimer);
  if (current === "experts") loadExperts();
  if (current === "try") loadModels();
  if (current === "live") {
    refreshLive();
    liveTimer = setInterval(refreshLive, 3000);
  }
}

// -- experts ------------------------------------------------------------------------------------

async function loadExperts() {
  try {
    const [experts, stats] = await Promise.all([api("/admin/experts"), api("/admin/stats?window=300")]);
    renderExperts(experts, stats);
  } catch (error) {
    $("experts-summary").textContent = error.message;
  }
}

function renderExperts(experts, stats) {
  expertKinds = Object.fromEntries(experts.data.map((e) => [e.name, e.kind]));
  const body = $("experts-table").querySelector("tbody");
  body.replaceChildren();
  const decisions = stats.decisions || 0;
  for (const expert of experts.data) {
    const recent = stats.experts[expert.name] || {};
    const share = decisions ? (recent.decisions || 0) / decisions : null;
    const replace = el("button", {type: "button", class: "quiet", text: "Replace",
                                  "aria-label": `Replace ${expert.name}`});
    replace.addEventListener("click", () => startReplace(expert));
    const remove = el("button", {type: "button", class: "danger", text: "Remove",
                                 "aria-label": `Remove ${expert.name}`});
    remove.addEventListener("click", () => removeExpert(expert.name));
    const state = expert.state + (expert.job ? ` ${Math.round(100 * expert.job.progress)}%` : "");
    const row = el("tr", {"data-expert": expert.name},
      el("th", {scope: "row", text: expert.name}),
      el("td", {text: expert.kind}),
      el("td", {class: "num", text: String(expert.version)}),
      el("td", {text: expert.tier || "–"}),
      el("td", {class: `state-${expert.state}`, text: state, title: expert.error || ""}),
      el("td", {class: "num", text: String(recent.requests || 0)}),
      el("td", {class: "num", text: recent.p50_ms == null ? "–" : `${recent.p50_ms} ms`}),
      el("td", {class: "num", text: pct(share)}),
      el("td", {}, replace, " ", remove));
    body.append(row);
  }
  const generalist = stats.fallback_share;
  $("experts-summary").textContent =
    `${experts.data.length} experts · registry version ${experts.registry_version} · ` +
    `${plural(decisions, "routing decision")} in the last 5 minutes, ${pct(generalist)} to the generalist (fallback)`;
  if (experts.data.some((e) => e.state === "indexing")) setTimeout(loadExperts, 2000);
}

let replacing = null;

function startReplace(expert) {
  replacing = expert.name;
  $("expert-form-title").textContent = `Replace ${expert.name}`;
  $("f-submit").textContent = "Replace";
  $("f-cancel").hidden = false;
  $("f-name").value = expert.name;
  $("f-name").readOnly = true;
  $("f-kind").value = expert.kind === "retriever" ? "retriever" : "adapter";
  $("f-description").value = expert.description || "";
  $("f-examples").value = (expert.examples || []).join("\n");
  $("f-capabilities").value = (expert.capabilities || []).join("\n");
  $("f-adapter-path").value = expert.adapter_path || "";
  $("f-generator").value = expert.generator || "";
  toggleKind();
  $("f-name").focus();
}

function resetForm() {
  replacing = null;
  $("expert-form").reset();
  $("f-name").readOnly = false;
  $("expert-form-title").textContent = "Register an expert";
  $("f-submit").textContent = "Register";
  $("f-cancel").hidden = true;
  toggleKind();
}

function toggleKind() {
  const retriever = $("f-kind").value === "retriever";
  $("adapter-fields").hidden = retriever;
  $("retriever-fields").hidden = !retriever;
}

async function submitExpert(event) {
  event.preventDefault();
  $("form-error").textContent = "";
  $("form-status").textContent = "";
  const name = $("f-name").value.trim();
  const kind = $("f-kind").value;
  const archive = kind === "adapter" ? $("f-adapter-file").files[0] : null;
  const uploadPath = `/admin/adapters/${encodeURIComponent(name)}`;
  const lines = (id) => $(id).value.split("\n").map((s) => s.trim()).filter(Boolean);
  const spec = {name, kind, description: $("f-description").value.trim(), examples: lines("f-examples"),
                capabilities: lines("f-capabilities")};
  $("f-submit").disabled = true;
  try {
    if (kind === "adapter") {
      if (archive) {
        $("form-status").textContent = "Uploading the adapter…";
        // The registry keeps its own copy of an adapter, so the upload is only a staging area: a
        // leftover from an earlier attempt under this name is cleared first, and this one after.
        await api(uploadPath, {method: "DELETE"}).catch(() => null);
        const uploaded = await api(uploadPath, {method: "POST", body: archive});
        spec.adapter_path = uploaded.adapter_path;
      } else {
        spec.adapter_path = $("f-adapter-path").value.trim() || null;
      }
    } else {
      const documents = $("f-documents").files[0];
      if (documents) {
        $("form-status").textContent = "Uploading the documents…";
        const uploaded = await api(`/admin/documents/${encodeURIComponent(name)}`,
                                   {method: "POST", body: documents});
        spec.documents_path = uploaded.documents_path;
      }
      if ($("f-generator").value.trim()) spec.generator = $("f-generator").value.trim();
    }
    const path = replacing ? `/admin/experts/${encodeURIComponent(replacing)}` : "/admin/experts";
    const result = await api(path, {method: replacing ? "PUT" : "POST", json: spec});
    if (archive) await api(uploadPath, {method: "DELETE"}).catch(() => null);
    const verb = replacing ? "Replaced" : "Registered";
    $("form-status").textContent = result.state === "indexing"
      ? `${verb} ${name}: indexing its documents in the background.`
      : `${verb} ${name} (version ${result.version}).`;
    resetForm();
  } catch (error) {
    $("form-status").textContent = "";
    $("form-error").textContent = error.message;
  } finally {
    $("f-submit").disabled = false;
    loadExperts();
  }
}

async function removeExpert(name) {
  if (!window.confirm(`Remove the expert ${name}? Running requests finish first.`)) return;
  $("form-error").textContent = "";
  try {
    await api(`/admin/experts/${encodeURIComponent(name)}`, {method: "DELETE"});
    $("form-status").textContent = `Removed ${name}.`;
  } catch (error) {
    $("form-error").textContent = error.message;
  }
  loadExperts();
}

// -- try a query --------------------------------------------------------------------------------

async function loadModels() {
  try {
    const [models, experts] = await Promise.all([api("/v1/models"), api("/admin/experts")]);
    expertKinds = Object.fromEntries(experts.data.map((e) => [e.name, e.kind]));
    const select = $("try-model");
    const chosen = select.value;
    select.replaceChildren(el("option", {value: "auto", text: "auto (routed)"}));
    for (const model of models.data) {
      if (model.id !== "auto") select.append(el("option", {value: model.id, text: model.id}));
    }
    select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "auto";
  } catch (error) {
    $("try-error").textContent = error.message;
  }
}

async function tryQuery(event) {
  event.preventDefault();
  // One line per user turn: a short conversation, routed in context as a chat client would send it.
  const messages = $("try-query").value.split("\n").map((line) => line.trim()).filter(Boolean)
    .map((content) => ({role: "user", content}));
  if (!messages.length) return;
  for (const id of ["try-error", "try-decision", "try-answer", "try-weights"]) $(id).textContent = "";
  $("try-passages").replaceChildren();
  $("try-submit").disabled = true;
  try {
    const experts = parseMixture($("try-mixture").value);
    const route = await api("/v1/route", {method: "POST", json: {messages}});
    drawRanking(route.ranking, route.decision);
    const model = experts ? "auto" : $("try-model").value;
    const d = route.decision;
    $("try-decision").textContent = experts ? `Pinned to a mixture. Routing would say: ${d.reason}.`
      : model !== "auto" ? `Pinned to ${model}. Routing would say: ${d.reason}.`
      : d.fallback ? `Fallback to the generalist (${d.expert}): ${d.reason}.`
        : `Routed to ${d.expert} (score ${fmt(d.score)}, runner-up ${d.runner_up || "–"} ` +
          `${fmt(d.runner_up_score)}): ${d.reason}.`;
    if (d.context && d.context !== "single") $("try-decision").textContent += ` Conversation: ${d.context_reason}.`;
    if (d.matched) $("try-decision").textContent += ` Nearest ${d.matched}: “${d.matched_text}”.`;
    const target = model === "auto" ? d.expert : model;
    if (!experts && (model === "auto" ? d.kind : kindOf(target)) === "retriever") await showPassages(messages, model);
    await streamAnswer(messages, model, experts);
  } catch (error) {
    $("try-error").textContent = error.message;
  } finally {
    $("try-submit").disabled = false;
  }
}

// "sql=0.7, math=0.3" (or "sql, math": equal weights) -> {sql: 0.7, math: 0.3}; empty -> null.
function parseMixture(text) {
  const parts = text.split(",").map((part) => part.trim()).filter(Boolean);
  if (!parts.length) return null;
  const experts = {};
  for (const part of parts) {
    const [name, weight] = part.split("=").map((s) => s.trim());
    const value = weight === undefined ? 1 : Number(weight);
    if (!name || !Number.isFinite(value)) throw new ApiError(`cannot read the mixture part “${part}”: use name=weight`);
    experts[name] = value;
  }
  return experts;
}

function showWeights(record) {
  if (!record.experts) return;
  $("try-weights").textContent = "Answered by a mixture: " +
    record.experts.map((c) => `${c.name} ${fmt(c.weight, 2)}`).join(" · ");
  $("try-weights").dataset.experts = record.experts.map((c) => `${c.name}=${c.weight}`).join(",");
}

function kindOf(name) {
  return expertKinds[name] || null;
}

function drawRanking(ranking, decision) {
  const chart = $("try-chart");
  clearChart(chart);
  const rowHeight = 26, left = 150, width = 520;
  const height = Math.max(1, ranking.length) * rowHeight + 30;
  chart.setAttribute("height", String(height));
  const scale = (score) => left + Math.max(0, Math.min(1, score)) * width;
  const best = ranking.length ? ranking[0].name : null;
  ranking.forEach((entry, i) => {
    const y = 8 + i * rowHeight;
    const isBest = entry.name === best;
    chart.append(svg("text", {x: left - 8, y: y + 15, "text-anchor": "end"}, entry.name));
    chart.append(svg("rect", {x: left, y, height: rowHeight - 8, width: Math.max(1, scale(entry.score) - left),
                              class: isBest ? "bar best" : "bar", "data-expert": entry.name,
                              "data-score": String(entry.score)}));
    chart.append(svg("text", {x: scale(entry.score) + 6, y: y + 15}, fmt(entry.score)));
  });
  const bottom = height - 18;
  chart.append(svg("line", {x1: left, x2: left + width, y1: bottom, y2: bottom, class: "axis"}));
  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    chart.append(svg("text", {x: scale(tick), y: height - 4, "text-anchor": "middle"}, String(tick)));
  }
  if (decision.threshold !== null && decision.threshold !== undefined) {
    const x = scale(decision.threshold);
    chart.append(svg("line", {x1: x, x2: x, y1: 2, y2: bottom, class: "threshold",
                              "data-threshold": String(decision.threshold)}));
    chart.append(svg("text", {x: x + 4, y: bottom - 4}, `threshold ${fmt(decision.threshold, 2)}`));
  }
}

async function showPassages(messages, model) {
  const result = await api("/v1/retrieve", {method: "POST", json: {messages, model, top_k: 5}});
  for (const passage of result.data) {
    $("try-passages").append(el("li", {},
      el("strong", {text: `${passage.title} `}), el("span", {class: "hint", text: `(${passage.id}, score ` +
        `${fmt(passage.score)})`}), el("p", {text: passage.text.slice(0, 400)})));
  }
}

async function streamAnswer(messages, model, experts) {
  const maxTokens = Number($("try-max-tokens").value) || 64;
  const body = {model, stream: true, max_tokens: maxTokens, messages};
  if (experts) body.experts = experts;
  const response = await api("/v1/chat/completions", {method: "POST", raw: true, json: body});
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 2);
      if (!event.startsWith("data:")) continue;
      const payload = event.slice(5).trim();
      if (payload === "[DONE]") return;
      const chunk = JSON.parse(payload);
      if (chunk.error) throw new ApiError(chunk.error.message);
      const delta = chunk.choices && chunk.choices[0] ? chunk.choices[0].delta.content : null;
      if (delta) $("try-answer").textContent += delta;
      if (chunk.switchyard) {
        $("try-answer").dataset.expert = chunk.switchyard.expert;
        showWeights(chunk.switchyard);
      }
    }
  }
}

// -- live routing -------------------------------------------------------------------------------

async function refreshLive() {
  try {
    drawLive(await api("/admin/stats?window=300&bucket=10"));
  } catch (error) {
    $("live-summary").textContent = error.message;
  }
}

function colourOf(name, names) {
  return PALETTE[names.indexOf(name) % PALETTE.length];
}

function drawLive(stats) {
  const chart = $("live-chart");
  clearChart(chart);
  const names = [...new Set(stats.timeline.flatMap((b) => Object.keys(b.experts)))].sort();
  const left = 40, top = 10, width = 640, height = 190;
  const peak = Math.max(1, ...stats.timeline.map((b) => b.decisions));
  const step = width / stats.timeline.length;
  chart.append(svg("line", {x1: left, x2: left + width, y1: top + height, y2: top + height, class: "axis"}));
  chart.append(svg("text", {x: left - 6, y: top + 10, "text-anchor": "end"}, String(peak)));
  chart.append(svg("text", {x: left - 6, y: top + height, "text-anchor": "end"}, "0"));
  chart.append(svg("text", {x: left + width + 4, y: top + 10}, "100%"));
  const points = [];
  stats.timeline.forEach((bucket, i) => {
    let y = top + height;
    for (const name of names) {
      const count = bucket.experts[name] || 0;
      if (!count) continue;
      const h = (count / peak) * height;
      y -= h;
      const rect = svg("rect", {x: left + i * step + 1, y, width: Math.max(1, step - 2), height: h,
                                fill: colourOf(name, names), "data-expert": name, "data-count": String(count)});
      rect.append(svg("title", {}, `${name}: ${count}`));
      chart.append(rect);
    }
    if (bucket.fallback_share !== null) {
      points.push(`${left + (i + 0.5) * step},${top + height - bucket.fallback_share * height}`);
    }
  });
  if (points.length) chart.append(svg("polyline", {points: points.join(" "), class: "fallback-line"}));
  chart.append(svg("text", {x: left, y: top + height + 22}, "5 minutes ago"));
  chart.append(svg("text", {x: left + width, y: top + height + 22, "text-anchor": "end"}, "now"));
  const legend = $("live-legend");
  legend.replaceChildren();
  for (const name of names) {
    const item = el("li", {text: `${name}: ${(stats.experts[name] || {}).decisions || 0}`});
    item.style.setProperty("--swatch", colourOf(name, names));
    legend.append(item);
  }
  const fallback = el("li", {text: `fallback share (line): ${pct(stats.fallback_share)}`});
  fallback.style.setProperty("--swatch", "#cf222e");
  legend.append(fallback);
  $("live-summary").textContent = `${plural(stats.decisions, "decision")} in the last 5 minutes · ` +
    `${pct(stats.fallback_share)} fell back to the generalist · ${stats.in_flight} requests in flight · ` +
    `registry version ${stats.registry_version}`;
}

// -- evaluation ---------------------------------------------------------------------------------

async function evaluateFile(event) {
  event.preventDefault();
  $("eval-error").textContent = "";
  const file = $("eval-file").files[0];
  if (!file) return;
  $("eval-submit").disabled = true;
  $("eval-summary").textContent = `Evaluating ${file.name}…`;
  try {
    const format = file.name.toLowerCase().endsWith(".csv") ? "csv" : "jsonl";
    renderReport(await api("/admin/evaluate", {method: "POST", json: {data: await file.text(), format}}));
  } catch (error) {
    $("eval-summary").textContent = "";
    $("eval-error").textContent = error.message;
  } finally {
    $("eval-submit").disabled = false;
  }
}

function table(id, head, rows) {
  const node = $(id);
  node.replaceChildren(el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {scope: "col", text: h})))));
  const body = el("tbody");
  for (const row of rows) body.append(row);
  node.append(body);
  return node;
}

function renderReport(report) {
  const oos = report.out_of_scope_label;
  const label = (name) => (name === oos ? "generalist (oos)" : name);
  $("eval-summary").textContent = `${report.n} queries · accuracy ${pct(report.accuracy)} · in-scope accuracy ` +
    `${pct(report.in_scope_accuracy)} · macro-F1 ${fmt(report.macro_f1)} · fallback precision ` +
    `${pct(report.oos_precision)}, recall ${pct(report.oos_recall)} · registry version ${report.registry_version}`;
  table("eval-per-label", ["Expert", "Precision", "Recall", "F1", "Support"], report.per_label.map((r) =>
    el("tr", {}, el("th", {scope: "row", text: label(r.label)}), el("td", {class: "num", text: fmt(r.precision)}),
       el("td", {class: "num", text: fmt(r.recall)}), el("td", {class: "num", text: fmt(r.f1)}),
       el("td", {class: "num", text: String(r.support)}))));
  const peak = Math.max(1, ...report.confusion.flat());
  const matrix = table("eval-confusion", ["true ↓ / predicted →", ...report.labels.map(label)],
    report.confusion.map((row, i) => el("tr", {}, el("th", {scope: "row", text: label(report.labels[i])}),
      ...row.map((count, j) => {
        const cell = el("td", {text: String(count), "data-true": report.labels[i],
                               "data-predicted": report.labels[j]});
        const strength = count / peak;
        cell.style.backgroundColor = `rgba(11, 92, 173, ${(0.85 * strength).toFixed(3)})`;
        if (strength > 0.5) cell.style.color = "#fff";
        return cell;
      }))));
  matrix.querySelector("thead th").setAttribute("scope", "col");
  const mistakes = report.mistakes.map((m) =>
    el("tr", {}, el("td", {text: m.text}), el("td", {text: label(m.label)}), el("td", {text: label(m.predicted)})));
  if (!mistakes.length) mistakes.push(el("tr", {}, el("td", {colspan: "3", text: "None: every query went where its label says."})));
  table("eval-mistakes", ["Query", "True", "Predicted"], mistakes);
}

// -- start --------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("f-kind").addEventListener("change", toggleKind);
  $("f-cancel").addEventListener("click", resetForm);
  $("expert-form").addEventListener("submit", submitExpert);
  $("try-form").addEventListener("submit", tryQuery);
  $("eval-form").addEventListener("submit", evaluateFile);
  window.addEventListener("hashchange", show);
  show();
});
