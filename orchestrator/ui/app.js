// Model Runner dashboard: plain JavaScript against the daemon's own API (same origin).
// Every string from the API or a model goes into the page as text (textContent) or through
// escapeHtml first; the server's Content-Security-Policy forbids inline and foreign scripts.
"use strict";

const POLL_RUNNING_MS = 2000;
const LOG_MAX_LINES = 5000;
const LOG_RETRY_MS = 2000;
const CHAT_STORE_KEY = "dmr.dashboard.chat.v1";

const $ = (id) => document.getElementById(id);

// ---------- small helpers ----------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function formatBytes(bytes) {
  if (typeof bytes !== "number" || !isFinite(bytes)) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : value < 10 ? 2 : 1)} ${units[unit]}`;
}

function formatDuration(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

// Go duration text ("5m0s", "1h30m0s", "250ms", "-1") -> seconds; -1 means never.
function parseGoDuration(text) {
  if (text === undefined || text === null) return null;
  text = String(text).trim();
  if (text.startsWith("-")) return -1;
  const scale = { h: 3600, m: 60, s: 1, ms: 1e-3, us: 1e-6, "µs": 1e-6, ns: 1e-9 };
  let total = 0;
  let matched = false;
  for (const part of text.matchAll(/(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)/g)) {
    total += parseFloat(part[1]) * scale[part[2]];
    matched = true;
  }
  return matched ? total : null;
}

function familiar(tag) {
  return tag.replace(/^(index\.)?docker\.io\//, "");
}

// The tag that names a model in the page: its ":latest" tag if it has one, else its first.
function mainTag(model) {
  const tags = model.tags || [];
  return tags.find((tag) => tag.endsWith(":latest")) || tags[0] || null;
}

function modelName(model) {
  const tag = mainTag(model);
  return tag ? familiar(tag) : model.id.replace(/^sha256:/, "").slice(0, 12);
}

// The reference an API call should use for a model: its main tag, else its ID.
function modelRef(model) {
  return mainTag(model) || model.id;
}

class ApiError extends Error {}

async function apiError(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (ignored) {
    // Not JSON: keep the status line.
  }
  return new ApiError(message);
}

// DMR_API_KEY: when the daemon asks for a key (401), ask the user once and keep it for this tab
// only (sessionStorage: gone with the tab, never written to disk by the page).
const API_KEY_STORE = "dmr.dashboard.apikey";

async function authorizedFetch(path, options = {}) {
  const send = () => {
    const key = sessionStorage.getItem(API_KEY_STORE);
    const headers = { ...(options.headers || {}) };
    if (key) headers.Authorization = `Bearer ${key}`;
    return fetch(path, { ...options, headers });
  };
  let response = await send();
  if (response.status === 401) {
    const key = window.prompt("This daemon needs its API key (DMR_API_KEY):");
    if (key) {
      sessionStorage.setItem(API_KEY_STORE, key.trim());
      response = await send();
    }
  }
  return response;
}

async function api(path, options = {}) {
  const response = await authorizedFetch(path, { cache: "no-store", ...options });
  if (!response.ok) throw await apiError(response);
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.text();
}

// Yield the lines of a streamed response body as they arrive.
async function* readLines(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let index;
    while ((index = buffer.indexOf("\n")) >= 0) {
      yield buffer.slice(0, index).replace(/\r$/, "");
      buffer = buffer.slice(index + 1);
    }
  }
  buffer += decoder.decode();
  if (buffer) yield buffer;
}

let toastTimer = null;
function toast(message, ok = false) {
  const box = $("toast");
  box.textContent = message;
  box.className = ok ? "toast ok" : "toast";
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, ok ? 3000 : 8000);
}

function setStatus(node, text, kind = "") {
  node.textContent = text;
  node.className = kind ? `status ${kind}` : "status";
}

// Resolve to the input's value (or true) when the user confirms, to null when not.
function ask({ title, text, okLabel, danger = false, field = null, value = "" }) {
  const dialog = $("dialog");
  $("dialog-title").textContent = title;
  $("dialog-text").textContent = text || "";
  $("dialog-ok").textContent = okLabel;
  $("dialog-ok").className = danger ? "primary danger" : "primary";
  $("dialog-field").hidden = !field;
  $("dialog-label").textContent = field || "";
  $("dialog-input").value = value;
  dialog.returnValue = "cancel";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (dialog.returnValue !== "ok") resolve(null);
      else resolve(field ? $("dialog-input").value.trim() : true);
    }, { once: true });
    dialog.showModal();
    (field ? $("dialog-input") : $("dialog-cancel")).focus();
  });
}

// ---------- tabs ----------

const TABS = ["models", "running", "chat", "logs"];
const onShow = {};

function showTab(name, focus = false) {
  if (!TABS.includes(name)) name = "models";
  for (const tab of TABS) {
    const selected = tab === name;
    const button = $(`tab-${tab}`);
    button.setAttribute("aria-selected", String(selected));
    button.tabIndex = selected ? 0 : -1;
    $(`view-${tab}`).hidden = !selected;
  }
  if (focus) $(`tab-${name}`).focus();
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  if (onShow[name]) onShow[name]();
}

function currentTab() {
  return TABS.find((tab) => !$(`view-${tab}`).hidden);
}

function setupTabs() {
  for (const tab of TABS) {
    $(`tab-${tab}`).addEventListener("click", () => showTab(tab));
    $(`tab-${tab}`).addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      event.preventDefault();
      showTab(TABS[(TABS.indexOf(tab) + step + TABS.length) % TABS.length], true);
    });
  }
  window.addEventListener("hashchange", () => showTab(location.hash.slice(1)));
}

// ---------- models ----------

let models = [];

async function loadModels() {
  try {
    models = await api("/models");
  } catch (error) {
    toast(`Cannot list models: ${error.message}`);
    return;
  }
  models.sort((a, b) => modelName(a).localeCompare(modelName(b)));
  renderModels();
  renderChatModels();
  renderLogModels();
}

function renderModels() {
  const body = $("models-table").querySelector("tbody");
  body.replaceChildren();
  for (const model of models) {
    const config = model.config || {};
    const name = modelName(model);
    const extraTags = (model.tags || []).filter((tag) => tag !== mainTag(model)).map(familiar).join(", ");
    const created = model.created ? new Date(model.created * 1000) : null;
    body.append(el("tr", { "data-model": name },
      el("td", {}, el("span", { class: "name", text: name }),
        extraTags ? el("span", { class: "tags", text: `also ${extraTags}` }) : null,
        el("span", { class: "tags", text: model.id.replace(/^sha256:/, "").slice(0, 12) })),
      el("td", { class: "num", text: config.parameters || "" }),
      el("td", { text: config.quantization || "" }),
      el("td", { text: config.architecture || "" }),
      el("td", { class: "num", text: config.size || "" }),
      el("td", { class: "num", text: config.context_size ? config.context_size.toLocaleString() : "" }),
      el("td", { class: "num" }, created
        ? el("time", { datetime: created.toISOString(), title: created.toLocaleString(), text: created.toLocaleDateString() })
        : ""),
      el("td", { class: "actions" },
        el("button", { type: "button", "aria-label": `Chat with ${name}`, onclick: () => chatWith(model) }, "Chat"),
        el("button", { type: "button", "aria-label": `Tag ${name}`, onclick: () => tagModel(model) }, "Tag"),
        el("button", { type: "button", class: "danger", "aria-label": `Delete ${name}`, onclick: () => deleteModel(model) }, "Delete")),
    ));
  }
  $("models-empty").hidden = models.length > 0;
}

async function deleteModel(model) {
  const tags = (model.tags || []).map(familiar);
  const ok = await ask({
    title: `Delete ${modelName(model)}?`,
    text: tags.length > 1
      ? `This removes the model and all its tags (${tags.join(", ")}) from disk.`
      : "This removes the model from disk; pull it again to use it.",
    okLabel: "Delete",
    danger: true,
  });
  if (!ok) return;
  try {
    await api(`/models/${model.id}?force=true`, { method: "DELETE" });
    toast(`Deleted ${modelName(model)}`, true);
  } catch (error) {
    toast(`Cannot delete ${modelName(model)}: ${error.message}`);
  }
  loadModels();
}

async function tagModel(model) {
  const target = await ask({
    title: `Tag ${modelName(model)}`,
    text: "Give the model another name, for example myorg/mymodel:v1.",
    okLabel: "Tag",
    field: "New name (repository:tag)",
    value: `${modelName(model).replace(/:[^/:]*$/, "")}:`,
  });
  if (!target) return;
  // The tag follows the last ':' after the last '/'; without one it is "latest".
  const match = /^(.+?)(?::([^/:]+))?$/.exec(target);
  const repo = match[1];
  const tag = match[2] || "latest";
  try {
    const query = new URLSearchParams({ repo, tag });
    await api(`/models/${model.id}/tag?${query}`, { method: "POST" });
    toast(`Tagged as ${repo}:${tag}`, true);
  } catch (error) {
    toast(`Cannot tag ${modelName(model)}: ${error.message}`);
  }
  loadModels();
}

// ---------- pull ----------

let pullController = null;

function layerRow(container, rows, id, label) {
  if (!rows.has(id)) {
    const bar = el("progress", { max: "1", value: "0", "aria-label": `${label} progress` });
    const text = el("span", { text: "0 %" });
    const row = el("div", { class: id === "total" ? "layer total" : "layer", "data-layer": id },
      el("code", { title: id, text: label }), bar, text);
    if (id === "total") container.prepend(row);
    else container.append(row);
    rows.set(id, { bar, text });
  }
  return rows.get(id);
}

function setBar(entry, current, size) {
  const fraction = size > 0 ? Math.min(1, current / size) : 0;
  entry.bar.max = 1;
  entry.bar.value = fraction;
  entry.text.textContent = `${Math.floor(fraction * 100)} % of ${formatBytes(size)}`;
}

async function pull(event) {
  event.preventDefault();
  const ref = $("pull-ref").value.trim();
  if (!ref || pullController) return;
  const status = $("pull-status");
  const container = $("pull-layers");
  container.replaceChildren();
  const rows = new Map();
  const layers = new Map();
  pullController = new AbortController();
  $("pull-start").disabled = true;
  $("pull-cancel").hidden = false;
  setStatus(status, `Pulling ${ref}…`);
  let outcome = null;
  try {
    const response = await authorizedFetch("/models/create", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ from: ref }),
      signal: pullController.signal,
    });
    if (!response.ok) throw await apiError(response);
    for await (const line of readLines(response)) {
      if (!line.trim()) continue;
      const message = JSON.parse(line);
      if (message.type === "progress" && message.layer && message.layer.id) {
        const layer = message.layer;
        layers.set(layer.id, layer);
        setBar(layerRow(container, rows, layer.id, layer.id.replace(/^sha256:/, "").slice(0, 12)), layer.current, layer.size);
        const done = [...layers.values()].reduce((sum, item) => sum + item.current, 0);
        const total = Math.max(message.total || 0, [...layers.values()].reduce((sum, item) => sum + item.size, 0));
        setBar(layerRow(container, rows, "total", "Total"), done, total);
        setStatus(status, message.message || `Pulling ${ref}…`);
      } else if (message.type === "success") {
        outcome = { text: message.message || "Model pulled", kind: "ok" };
      } else if (message.type === "warning") {
        toast(message.message);
      } else if (message.type === "error") {
        outcome = { text: message.message || "Pull failed", kind: "error" };
      }
    }
    if (!outcome) outcome = { text: "The pull stream ended without a result; see Logs", kind: "error" };
  } catch (error) {
    outcome = error.name === "AbortError"
      ? { text: `Pull of ${ref} cancelled; pulling again resumes it`, kind: "" }
      : { text: `Cannot pull ${ref}: ${error.message}`, kind: "error" };
  } finally {
    pullController = null;
    $("pull-start").disabled = false;
    $("pull-cancel").hidden = true;
  }
  if (outcome.kind === "ok") {
    for (const [id, entry] of rows) {
      const layer = layers.get(id);
      if (layer) setBar(entry, layer.size, layer.size);
    }
    if (rows.has("total")) {
      const total = [...layers.values()].reduce((sum, item) => sum + item.size, 0);
      setBar(rows.get("total"), total, total);
    }
  }
  setStatus(status, outcome.text, outcome.kind);
  loadModels();
}

// ---------- running ----------

let runningTimer = null;

// What admission counted for the runner, and which figure it was: the estimate from the GGUF
// header, or the footprint learned from earlier runs of the same model and arguments.
function memoryText(memory) {
  if (!memory) return "";
  const admitted = memory.admitted_with;
  const estimate = memory.estimate && memory.estimate.total;
  const measured = memory.measured ? (memory.measured.rss || 0) + (memory.measured.vram || 0) : null;
  const counted = admitted
    ? `${formatBytes((admitted.ram || 0) + (admitted.vram || 0))} (${admitted.source === "measured" ? "learned" : "estimate"})`
    : (estimate ? `~${formatBytes(estimate)} (estimate)` : "no estimate");
  return [counted, measured ? formatBytes(measured) : "not measured yet"].join(" / ");
}

// Where a runner with llama.cpp RPC workers put its layers (from /engines/ps "rpc"), and any
// worker that did not answer when it was planned.
function placementText(rpc) {
  if (!rpc) return "";
  const parts = (rpc.placement || []).map((device) =>
    `${device.device}${device.layers ? ` ${device.layers} layers` : ""} ${formatBytes(device.model_bytes)}`);
  const down = (rpc.workers || []).filter((worker) => !worker.reachable)
    .map((worker) => `${worker.endpoint} unreachable`);
  return [...parts, ...down].join(" · ") || "RPC workers: placement not known yet";
}

function untilText(entry) {
  if (entry.loading) return "loading…";
  if (entry.in_use) return "in use";
  const keepAlive = parseGoDuration(entry.keep_alive);
  if (keepAlive === -1) return "always (never unloaded)";
  if (keepAlive === 0) return "unloads when idle";
  const lastUsed = Date.parse(entry.last_used);
  if (keepAlive === null || isNaN(lastUsed) || lastUsed <= 0) return "";
  const until = new Date(lastUsed + keepAlive * 1000);
  return `${until.toLocaleTimeString()} (in ${formatDuration((until - Date.now()) / 1000)})`;
}

async function refreshRunning() {
  let entries;
  try {
    entries = await api("/engines/ps");
  } catch (error) {
    $("running-updated").textContent = `Cannot read running models: ${error.message}`;
    return;
  }
  const body = $("running-table").querySelector("tbody");
  body.replaceChildren();
  for (const entry of entries) {
    const state = entry.loading ? "loading" : entry.in_use ? "in use" : "idle";
    body.append(el("tr", { "data-model": entry.model_name, "data-mode": entry.mode },
      el("td", { class: "name", text: entry.model_name }),
      el("td", { text: entry.mode }),
      el("td", {}, el("span", { class: `badge ${state === "idle" ? "idle" : "busy"}`, text: state })),
      el("td", { class: "num", text: entry.context_size ? entry.context_size.toLocaleString() : "" }),
      el("td", { class: "num" }, memoryText(entry.memory),
        ...(entry.rpc ? [el("div", { class: "placement muted small", text: placementText(entry.rpc) })] : [])),
      el("td", { class: "num", text: untilText(entry) }),
      el("td", { class: "actions" },
        el("button", { type: "button", "aria-label": `Unload ${entry.model_name}`, onclick: () => unload([entry.model_name]) }, "Unload")),
    ));
  }
  $("running-empty").hidden = entries.length > 0;
  $("running-updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
}

async function unload(names) {
  const body = names ? { models: names } : { all: true };
  try {
    const result = await api("/engines/unload", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    toast(`Unloaded ${result.unloaded_runners} runner(s)`, true);
  } catch (error) {
    toast(`Cannot unload: ${error.message}`);
  }
  refreshRunning();
}

function pollRunning() {
  clearTimeout(runningTimer);
  if (currentTab() !== "running" || document.hidden) return;
  refreshRunning().finally(() => {
    clearTimeout(runningTimer);
    if (currentTab() === "running") runningTimer = setTimeout(pollRunning, POLL_RUNNING_MS);
  });
}

// ---------- chat ----------

// Minimal Markdown: HTML is escaped first; then fenced code, inline code, bold, paragraphs.
function renderInline(text) {
  return escapeHtml(text)
    .split(/(`[^`\n]+`)/)
    .map((part, index) => index % 2
      ? `<code>${part.slice(1, -1)}</code>`
      : part.replace(/\*\*(?=\S)(.+?)\*\*/g, "<strong>$1</strong>").replace(/^#{1,6} (.*)$/gm, "<strong>$1</strong>"))
    .join("");
}

function renderMarkdown(source) {
  const html = [];
  let paragraph = [];
  let code = null;
  const flush = () => {
    if (paragraph.length) html.push(`<p>${paragraph.map(renderInline).join("<br>")}</p>`);
    paragraph = [];
  };
  for (const line of source.split("\n")) {
    const fence = /^\s*```\s*([\w+#.-]*)/.exec(line);
    if (code) {
      if (fence && !fence[1]) {
        html.push(`<pre><code>${escapeHtml(code.lines.join("\n"))}</code></pre>`);
        code = null;
      } else {
        code.lines.push(line);
      }
    } else if (fence) {
      flush();
      code = { lang: fence[1], lines: [] };
    } else if (!line.trim()) {
      flush();
    } else {
      paragraph.push(line);
    }
  }
  flush();
  // An unterminated block (still streaming) shows as code already.
  if (code) html.push(`<pre><code>${escapeHtml(code.lines.join("\n"))}</code></pre>`);
  return html.join("");
}

let chat = { model: "", system: "", messages: [] };
let chatController = null;

function loadChat() {
  try {
    const saved = JSON.parse(localStorage.getItem(CHAT_STORE_KEY) || "null");
    if (saved && Array.isArray(saved.messages)) chat = { model: saved.model || "", system: saved.system || "", messages: saved.messages };
  } catch (ignored) {
    // A corrupt entry starts a new conversation.
  }
  $("chat-system").value = chat.system;
  if (chat.system) $("chat-system-box").open = true;
  renderChat();
}

function saveChat() {
  try {
    localStorage.setItem(CHAT_STORE_KEY, JSON.stringify(chat));
  } catch (error) {
    toast(`Cannot keep the conversation in this browser: ${error.message}`);
  }
}

function messageNode(message) {
  const body = el("div", { class: "body" });
  if (message.role === "assistant") body.innerHTML = renderMarkdown(message.content);
  else body.textContent = message.content;
  const who = message.role === "user" ? "You" : message.model ? familiar(message.model) : "Assistant";
  return el("div", { class: `msg ${message.role}${message.error ? " error" : ""}` },
    el("span", { class: "who", text: who }), body,
    message.stats ? el("span", { class: "stats", text: message.stats }) : null);
}

function renderChat() {
  const log = $("chat-log");
  log.replaceChildren(...chat.messages.map(messageNode));
  log.scrollTop = log.scrollHeight;
}

function renderChatModels() {
  const select = $("chat-model");
  const wanted = select.value || chat.model;
  select.replaceChildren(...models.map((model) => el("option", { value: modelRef(model), text: modelName(model) })));
  const refs = models.map(modelRef);
  if (refs.includes(wanted)) select.value = wanted;
  $("chat-send").disabled = models.length === 0;
  if (!models.length) setStatus($("chat-status"), "No local model: pull one in the Models view first.");
  else if ($("chat-status").textContent.startsWith("No local model")) setStatus($("chat-status"), "");
}

function chatWith(model) {
  $("chat-model").value = modelRef(model);
  chat.model = modelRef(model);
  saveChat();
  showTab("chat");
  $("chat-input").focus();
}

function statsText(timings, usage, tokensSeen, started, firstAt, endedAt) {
  if (timings && timings.predicted_per_second) {
    return `${timings.predicted_per_second.toFixed(1)} tokens/s · ${timings.predicted_n} tokens`;
  }
  const tokens = usage && usage.completion_tokens ? usage.completion_tokens : tokensSeen;
  const seconds = (endedAt - (firstAt || started)) / 1000;
  if (!tokens || seconds <= 0) return "";
  return `${(tokens / seconds).toFixed(1)} tokens/s · ${tokens} tokens (measured)`;
}

async function sendChat(event) {
  event.preventDefault();
  const text = $("chat-input").value.trim();
  const model = $("chat-model").value;
  if (!text || !model || chatController) return;
  chat.model = model;
  chat.system = $("chat-system").value;
  chat.messages.push({ role: "user", content: text });
  $("chat-input").value = "";
  const answer = { role: "assistant", content: "", model };
  const history = chat.messages.filter((m) => !m.error).map((m) => ({ role: m.role, content: m.content }));
  if (chat.system.trim()) history.unshift({ role: "system", content: chat.system.trim() });
  chat.messages.push(answer);
  saveChat();
  renderChat();
  const node = $("chat-log").lastElementChild;
  node.classList.add("streaming");
  const body = node.querySelector(".body");
  chatController = new AbortController();
  $("chat-send").hidden = true;
  $("chat-stop").hidden = false;
  setStatus($("chat-status"), `Waiting for ${familiar(model)} (the first answer loads the model)…`);
  const started = performance.now();
  let firstAt = null;
  let tokensSeen = 0;
  let timings = null;
  let usage = null;
  let stopped = false;
  try {
    const response = await authorizedFetch("/engines/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({ model, messages: history, stream: true, stream_options: { include_usage: true } }),
      signal: chatController.signal,
    });
    if (!response.ok) throw await apiError(response);
    setStatus($("chat-status"), "Answering…");
    for await (const line of readLines(response)) {
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(chunk.error.message || "the engine failed");
      if (chunk.timings) timings = chunk.timings;
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        if (firstAt === null) firstAt = performance.now();
        tokensSeen += 1;
        answer.content += delta.content;
        body.innerHTML = renderMarkdown(answer.content);
        const log = $("chat-log");
        log.scrollTop = log.scrollHeight;
      }
    }
  } catch (error) {
    if (error.name === "AbortError") {
      stopped = true;
    } else {
      answer.error = true;
      answer.content = answer.content ? `${answer.content}\n\n${error.message}` : error.message;
    }
  } finally {
    chatController = null;
    $("chat-send").hidden = false;
    $("chat-stop").hidden = true;
  }
  const stats = statsText(timings, usage, tokensSeen, started, firstAt, performance.now());
  answer.stats = [stats, stopped ? "stopped" : ""].filter(Boolean).join(" · ");
  if (!answer.content && !answer.error) answer.content = stopped ? "" : "(empty answer)";
  saveChat();
  renderChat();
  setStatus($("chat-status"), answer.error ? "The request failed; see the message above." : "");
  $("chat-input").focus();
}

// ---------- logs ----------

const logLines = [];
let logsStarted = false;

function logFilter() {
  const terms = $("logs-filter").value.toLowerCase().split("|").map((t) => t.trim()).filter(Boolean);
  return (line) => !terms.length || terms.some((term) => line.toLowerCase().includes(term));
}

function renderLogs() {
  const keep = logFilter();
  $("logs-output").textContent = logLines.filter(keep).join("\n");
  scrollLogs();
}

function scrollLogs() {
  if ($("logs-follow").checked) {
    const out = $("logs-output");
    out.scrollTop = out.scrollHeight;
  }
}

function renderLogModels() {
  const names = new Set();
  for (const model of models) {
    names.add(modelName(model));
    names.add(model.id.replace(/^sha256:/, "").slice(0, 12));
  }
  $("logs-models").replaceChildren(...[...names].map((name) => el("option", { value: name })));
}

async function followLogs() {
  const status = $("logs-status");
  for (;;) {
    try {
      const response = await authorizedFetch("/logs?follow=true", { cache: "no-store" });
      if (!response.ok) throw await apiError(response);
      setStatus(status, "Following the daemon and engine logs.");
      let pending = [];
      let scheduled = false;
      for await (const line of readLines(response)) {
        pending.push(line);
        // Batch DOM updates: a burst of lines costs one paint.
        if (!scheduled) {
          scheduled = true;
          requestAnimationFrame(() => {
            scheduled = false;
            appendLogLines(pending);
            pending = [];
          });
        }
      }
      setStatus(status, "The log stream ended; reconnecting…");
    } catch (error) {
      setStatus(status, `Cannot read the logs: ${error.message}; retrying…`, "error");
    }
    await new Promise((resolve) => setTimeout(resolve, LOG_RETRY_MS));
  }
}

function appendLogLines(lines) {
  if (!lines.length) return;
  logLines.push(...lines);
  if (logLines.length > LOG_MAX_LINES) {
    logLines.splice(0, logLines.length - LOG_MAX_LINES);
    renderLogs();
    return;
  }
  const shown = lines.filter(logFilter());
  if (shown.length) {
    const out = $("logs-output");
    out.append(document.createTextNode((out.textContent ? "\n" : "") + shown.join("\n")));
    scrollLogs();
  }
}

// ---------- start ----------

async function showEngineStatus() {
  try {
    const [version, status] = await Promise.all([api("/version"), api("/engines/status")]);
    const engine = Object.entries(status).map(([name, text]) => `${name}: ${text}`).join(", ");
    $("engine-status").textContent = `v${version.version} · ${engine}`;
  } catch (error) {
    $("engine-status").textContent = `Daemon unreachable: ${error.message}`;
  }
}

function start() {
  setupTabs();
  $("pull-form").addEventListener("submit", pull);
  $("pull-cancel").addEventListener("click", () => pullController && pullController.abort());
  $("models-refresh").addEventListener("click", loadModels);
  $("unload-all").addEventListener("click", () => unload(null));
  $("chat-form").addEventListener("submit", sendChat);
  $("chat-stop").addEventListener("click", () => chatController && chatController.abort());
  $("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("chat-form").requestSubmit();
    }
  });
  $("chat-model").addEventListener("change", () => { chat.model = $("chat-model").value; saveChat(); });
  $("chat-system").addEventListener("change", () => { chat.system = $("chat-system").value; saveChat(); });
  $("chat-new").addEventListener("click", () => { chat.messages = []; saveChat(); renderChat(); $("chat-input").focus(); });
  $("logs-filter").addEventListener("input", renderLogs);
  $("logs-follow").addEventListener("change", scrollLogs);
  $("logs-clear").addEventListener("click", () => { logLines.length = 0; renderLogs(); });
  document.addEventListener("visibilitychange", () => { if (currentTab() === "running") pollRunning(); });
  onShow.models = loadModels;
  onShow.running = pollRunning;
  onShow.logs = () => {
    if (!logsStarted) {
      logsStarted = true;
      followLogs();
    }
  };
  loadChat();
  showEngineStatus();
  showTab(location.hash.slice(1) || "models");
  if (currentTab() !== "models") loadModels();
}

start();
