// embedforge playground: every number on the page comes from this server's public HTTP API.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: "", config: null, embedder: null, reranker: null, hidden: null };

// ---------------------------------------------------------------- the API
const STATUS_WORDS = {
  400: "The server could not use this input",
  401: "Not authorized: the API key is missing or wrong",
  404: "Not found",
  405: "Method not allowed",
  413: "Request too large",
  422: "Invalid request",
  429: "The server is busy (its queue is full)",
  500: "Internal server error",
  503: "The server is not ready",
};

class ApiError extends Error {}

function describeError(status, body, retryAfter) {
  const detail = body && body.error && body.error.message ? body.error.message : "no details given";
  let text = `${STATUS_WORDS[status] || "The request failed"} (HTTP ${status}): ${detail}`;
  if (retryAfter) text += ` Try again in ${retryAfter} s.`;
  return text;
}

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (state.key) headers["Authorization"] = `Bearer ${state.key}`;
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(`Could not reach the server: ${err.message}`);
  }
  let data = null;
  try {
    data = await resp.json();
  } catch (err) {
    data = null;
  }
  if (!resp.ok) throw new ApiError(describeError(resp.status, data, resp.headers.get("Retry-After")));
  const timing = /dur=([0-9.]+)/.exec(resp.headers.get("Server-Timing") || "");
  return { data, ms: timing ? Number(timing[1]) : null, path, body };
}

function showError(err) {
  const box = $("error");
  box.textContent = err instanceof ApiError ? err.message : `Unexpected error in the page: ${err}`;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

async function guarded(button, work) {
  clearError();
  button.disabled = true;
  try {
    state.key = $("api-key").value.trim();
    if (!state.embedder && !state.reranker) await loadModels();
    await work();
  } catch (err) {
    showError(err);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- snippets and latency
function shellQuote(s) {
  return `'${s.replace(/'/g, "'\\''")}'`;
}

function pyLiteral(v, indent = "") {
  if (v === null || v === undefined) return "None";
  if (v === true) return "True";
  if (v === false) return "False";
  if (typeof v === "number") return String(v);
  if (typeof v === "string") return JSON.stringify(v);
  const inner = indent + "    ";
  if (Array.isArray(v)) return `[${v.map((x) => pyLiteral(x, inner)).join(", ")}]`;
  const items = Object.entries(v).map(([k, x]) => `\n${inner}${JSON.stringify(k)}: ${pyLiteral(x, inner)}`);
  return `{${items.join(",")}\n${indent}}`;
}

function curlSnippet(path, body) {
  const lines = [`curl -s ${location.origin}${path}`, `  -H 'Content-Type: application/json'`];
  if (state.config && state.config.auth_required) lines.push(`  -H "Authorization: Bearer $EMBEDFORGE_API_KEY"`);
  lines.push(`  -d ${shellQuote(JSON.stringify(body))}`);
  return lines.join(" \\\n");
}

function pythonSnippet(path, body) {
  const key = state.config && state.config.auth_required ? 'os.environ["EMBEDFORGE_API_KEY"]' : '"none"';
  if (path === "/v1/embeddings") {
    const { input, model, dimensions, ...extra } = body;
    const args = [`model=${pyLiteral(model)}`, `input=${pyLiteral(input)}`];
    if (dimensions) args.push(`dimensions=${dimensions}`);
    if (Object.keys(extra).length) args.push(`extra_body=${pyLiteral(extra)}`);
    return [
      "import os",
      "from openai import OpenAI",
      "",
      `client = OpenAI(base_url="${location.origin}/v1", api_key=${key})`,
      `resp = client.embeddings.create(${args.join(", ")})`,
      "vectors = [d.embedding for d in resp.data]",
    ].join("\n");
  }
  const headers = state.config && state.config.auth_required
    ? ', headers={"Authorization": f"Bearer {os.environ[\'EMBEDFORGE_API_KEY\']}"}' : "";
  return [
    "import os",
    "import httpx  # the openai client has no call for this route",
    "",
    `body = ${pyLiteral(body)}`,
    `resp = httpx.post("${location.origin}${path}", json=body${headers}).json()`,
  ].join("\n");
}

function copyText(text, button) {
  const done = () => { button.textContent = "Copied"; setTimeout(() => { button.textContent = "Copy"; }, 1200); };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => { button.textContent = "Select and copy"; });
    return;
  }
  const area = document.createElement("textarea");
  area.value = text;
  document.body.appendChild(area);
  area.select();
  document.execCommand("copy");
  area.remove();
  done();
}

function renderMeta(target, results) {
  const box = $(target);
  box.replaceChildren();
  const lat = document.createElement("p");
  lat.className = "latency";
  lat.dataset.testid = `${target}-latency`;
  lat.textContent = "Server time: " + results
    .map((r) => `${r.label} ${r.ms === null ? "n/a" : r.ms.toFixed(1) + " ms"}`).join(" · ");
  box.appendChild(lat);
  const shown = results[0];
  const node = $("snippets-template").content.firstElementChild.cloneNode(true);
  const curl = curlSnippet(shown.path, shown.body);
  const py = pythonSnippet(shown.path, shown.body);
  node.querySelector(".curl").textContent = curl;
  node.querySelector(".python").textContent = py;
  node.querySelector('[data-copy="curl"]').addEventListener("click", (e) => copyText(curl, e.target));
  node.querySelector('[data-copy="python"]').addEventListener("click", (e) => copyText(py, e.target));
  box.appendChild(node);
}

// ---------------------------------------------------------------- helpers
const lines = (id) => $(id).value.split("\n").map((s) => s.trim()).filter((s) => s.length > 0);

function dot(a, b) {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

function heat(t) {  // 0 .. 1 (the matrix's lowest .. highest score) -> pale to strong blue
  return `rgba(37, 99, 235, ${0.08 + 0.8 * t})`;
}

function ranks(row) {  // rank (0 = best) of each column; ties keep column order
  const order = row.map((s, j) => j).sort((a, b) => row[b] - row[a] || a - b);
  const out = new Array(row.length);
  order.forEach((j, r) => { out[j] = r; });
  return out;
}

function currentInstruction() {  // {instruction: string|null, both: bool}
  const v = $("instruction").value;
  if (v === "default") return { instruction: null, both: false };
  if (v === "custom") {
    const text = $("instruction-text").value.trim();
    return { instruction: text.length ? text : null, both: false };
  }
  const choice = state.config.instructions[Number(v)];
  return { instruction: choice.instruction, both: choice.both_sides };
}

// ---------------------------------------------------------------- Compare
function embedBody(input, side, instr, dim) {
  const body = { model: state.embedder.id, input, input_type: side };
  if (instr.instruction !== null && (side === "query" || instr.both)) body.instruction = instr.instruction;
  if (dim !== null) body.dimensions = dim;
  return body;
}

async function embed(input, side, instr, dim) {
  const r = await api("POST", "/v1/embeddings", embedBody(input, side, instr, dim));
  return { vectors: r.data.data.map((d) => d.embedding), ms: r.ms, path: r.path, body: r.body };
}

async function runCompare() {
  const queries = lines("queries");
  const docs = lines("documents");
  if (!queries.length || !docs.length) throw new ApiError("Type at least one query and one document (one per line).");
  const instr = currentInstruction();
  const dim = Number($("dim").value);
  const reduced = dim < state.hidden ? dim : null;
  const q = await embed(queries, "query", instr, reduced);
  const d = await embed(docs, "document", instr, reduced);
  const results = [{ ...q, label: "queries" }, { ...d, label: "documents" }];
  let fullScores = null;
  if (reduced !== null) {
    const qf = await embed(queries, "query", instr, null);
    const df = await embed(docs, "document", instr, null);
    results.push({ ...qf, label: "queries (full)" }, { ...df, label: "documents (full)" });
    fullScores = qf.vectors.map((a) => df.vectors.map((b) => dot(a, b)));
  }
  const scores = q.vectors.map((a) => d.vectors.map((b) => dot(a, b)));  // (n_query, n_doc)
  renderMatrix(queries, docs, scores, fullScores);
  $("side-hint").textContent = instr.instruction === null
    ? "Queries get the model's default query prompt; documents get none."
    : instr.both ? "The instruction goes on queries and documents (the official rule for this task)."
      : "The instruction goes on queries only; documents get none.";
  renderMeta("compare-meta", results);
}

function renderMatrix(queries, docs, scores, fullScores) {
  const table = $("matrix");
  table.replaceChildren();
  const head = table.insertRow();
  head.appendChild(document.createElement("th"));
  docs.forEach((doc, j) => {
    const th = document.createElement("th");
    th.textContent = `D${j + 1}`;
    th.title = doc;
    head.appendChild(th);
  });
  const flat = scores.flat();
  const lo = Math.min(...flat);
  const span = Math.max(...flat) - lo;
  queries.forEach((query, i) => {
    const row = table.insertRow();
    const th = document.createElement("th");
    th.textContent = `Q${i + 1}`;
    th.title = query;
    row.appendChild(th);
    const now = ranks(scores[i]);
    const before = fullScores ? ranks(fullScores[i]) : null;
    scores[i].forEach((s, j) => {
      const td = row.insertCell();
      td.dataset.testid = `cell-${i}-${j}`;
      td.textContent = s.toFixed(4);
      td.title = `Q${i + 1}: ${query}\nD${j + 1}: ${docs[j]}\nrank ${now[j] + 1}`;
      const t = span > 0 ? (s - lo) / span : 1;
      td.style.background = heat(t);
      if (t > 0.55) td.classList.add("dark");
      if (before) {
        const moved = before[j] - now[j];
        td.dataset.rankChange = String(moved);
        td.dataset.delta = moved > 0 ? `▲${moved}` : moved < 0 ? `▼${-moved}` : "=";
      }
    });
  });
  const legend = document.createElement("caption");
  legend.textContent = queries.map((q, i) => `Q${i + 1} ${q}`).concat(docs.map((d, j) => `D${j + 1} ${d}`)).join(" · ");
  table.appendChild(legend);
  $("rank-hint").hidden = !fullScores;
}

// ---------------------------------------------------------------- Rerank
function renderRanked(listId, rows) {
  const list = $(listId);
  list.replaceChildren();
  for (const r of rows) {
    const li = document.createElement("li");
    li.dataset.score = String(r.score);
    if (r.index !== undefined) li.dataset.index = String(r.index);
    const bar = document.createElement("div");
    bar.className = "bar-track";
    const fill = document.createElement("div");
    fill.className = "bar-fill";
    fill.style.width = `${Math.max(0, Math.min(1, r.bar)) * 100}%`;
    bar.appendChild(fill);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = r.label;
    const text = document.createElement("span");
    text.className = "doc";
    text.textContent = r.text;
    li.append(score, bar, text);
    if (r.extra) li.appendChild(r.extra);
    list.appendChild(li);
  }
}

async function runRerank() {
  const query = $("rerank-query").value.trim();
  const docs = lines("rerank-documents");
  if (!query || !docs.length) throw new ApiError("Type a query and at least one document (one per line).");
  const body = { model: state.reranker.id, query, documents: docs, return_documents: true };
  const instruction = $("rerank-instruction").value.trim();
  if (instruction) body.instruction = instruction;
  const r = await api("POST", "/v1/rerank", body);
  renderRanked("rerank-results", r.data.results.map((x) => ({
    score: x.relevance_score, bar: x.relevance_score, label: x.relevance_score.toFixed(4),
    text: docs[x.index], index: x.index,
  })));
  renderMeta("rerank-meta", [{ ...r, label: "rerank" }]);
}

// ---------------------------------------------------------------- Search
async function runSearch() {
  const query = $("search-query").value.trim();
  if (!query) throw new ApiError("Type a query.");
  const body = { query, k: Number($("search-k").value) || 10 };
  const where = $("search-where").value.trim();
  if (where) body.where = where;
  if ($("search-rerank").checked) {
    body.rerank = true;
    body.rerank_top = Number($("search-rerank-top").value) || 100;
  }
  const r = await api("POST", "/v1/search", body);
  renderRanked("search-results", r.data.data.map((h) => {
    const meta = document.createElement("div");
    meta.className = "hit-meta";
    const parts = [`id ${h.id}`, `similarity ${h.score.toFixed(4)}`];
    if (h.rerank_score !== null && h.rerank_score !== undefined) parts.push(`rerank ${h.rerank_score.toFixed(4)}`);
    for (const [k, v] of Object.entries(h.metadata || {})) parts.push(`${k}: ${JSON.stringify(v)}`);
    meta.textContent = parts.join(" · ");
    const score = h.rerank_score ?? h.score;
    return { score, bar: score, label: score.toFixed(4), text: h.title ? `${h.title} — ${h.text}` : h.text, extra: meta };
  }));
  if (!r.data.data.length) $("search-results").textContent = "No document matched.";
  renderMeta("search-meta", [{ ...r, label: "search" }]);
}

// ---------------------------------------------------------------- Tokens
function visible(piece) {
  return piece.replace(/ /g, "·").replace(/\n/g, "⏎").replace(/\t/g, "⇥") || "∅";
}

async function runTokens() {
  const side = $("tokens-side").value;
  const text = $("tokens-input").value;
  if (!text.trim()) throw new ApiError("Type a text to tokenize.");
  let body;
  if (side === "rerank") {
    body = { model: state.reranker.id, query: text, documents: [$("tokens-document").value] };
    const instruction = $("rerank-instruction").value.trim();
    if (instruction) body.instruction = instruction;
  } else {
    const instr = currentInstruction();
    body = { model: state.embedder.id, input: [text], input_type: side };
    if (instr.instruction !== null && (side === "query" || instr.both)) body.instruction = instr.instruction;
  }
  const r = await api("POST", "/v1/tokenize", body);
  const seq = r.data.data[0];
  const box = $("tokens");
  box.replaceChildren();
  const summary = document.createElement("p");
  summary.className = "token-summary";
  summary.dataset.testid = "token-count";
  summary.textContent = `${seq.count} tokens (model limit ${r.data.max_length})` + (seq.truncated
    ? ` — truncated: ${seq.untruncated_count} before truncation, cut at position ${seq.cut_at}`
    : " — not truncated");
  box.appendChild(summary);
  if (r.data.prompt) {
    const p = document.createElement("p");
    p.className = "hint";
    p.textContent = `Prompt: ${JSON.stringify(r.data.prompt)}`;
    box.appendChild(p);
  }
  const kind = new Array(seq.count).fill("text");
  for (const s of seq.segments) for (let i = s.start; i < s.stop; i++) kind[i] = s.kind;
  const chips = document.createElement("div");
  chips.className = "chips";
  seq.ids.forEach((id, i) => {
    if (seq.cut_at !== null && i === seq.cut_at) {
      const cut = document.createElement("span");
      cut.className = "cut";
      cut.textContent = `✂ ${seq.untruncated_count - seq.count} tokens cut`;
      chips.appendChild(cut);
    }
    const chip = document.createElement("span");
    chip.className = `chip ${kind[i]}`;
    chip.title = `#${i} id ${id} ${JSON.stringify(seq.tokens[i])} (${kind[i]})`;
    const piece = document.createElement("span");
    piece.className = "piece";
    piece.textContent = visible(seq.pieces[i]);
    const idEl = document.createElement("span");
    idEl.className = "id";
    idEl.textContent = String(id);
    chip.append(piece, idEl);
    chips.appendChild(chip);
  });
  box.appendChild(chips);
  const legend = document.createElement("p");
  legend.className = "legend";
  for (const k of ["prompt", "text", "special", "template"]) {
    if (!kind.includes(k)) continue;
    const l = document.createElement("span");
    l.className = `chip ${k}`;
    l.textContent = { prompt: "instruction prompt", text: "text", special: "added by the model (end token)", template: "reranker template" }[k];
    legend.appendChild(l);
  }
  box.appendChild(legend);
  renderMeta("tokens-meta", [{ ...r, label: "tokenize" }]);
}

// ---------------------------------------------------------------- start-up
function showTab(name) {
  for (const b of document.querySelectorAll("[data-tab]")) b.setAttribute("aria-selected", String(b.dataset.tab === name));
  for (const s of document.querySelectorAll(".panel")) s.hidden = s.id !== `tab-${name}`;
}

function fillInstructions() {
  const sel = $("instruction");
  const add = (value, text) => { const o = document.createElement("option"); o.value = value; o.textContent = text; sel.appendChild(o); };
  add("default", "Model default (query prompt only)");
  state.config.instructions.forEach((c, i) => {
    const tasks = c.tasks.length > 3 ? `${c.tasks.slice(0, 3).join(", ")} +${c.tasks.length - 3}` : c.tasks.join(", ");
    add(String(i), `${tasks}: ${c.instruction}`);
  });
  add("custom", "Your own instruction…");
}

async function loadModels() {  // throws ApiError (e.g. 401 with a wrong key)
  const r = await api("GET", "/v1/models");
  state.embedder = r.data.data.find((m) => m.task === "embedding") || null;
  state.reranker = r.data.data.find((m) => m.task === "rerank") || null;
  $("models").textContent = "Models: " + [state.embedder, state.reranker].filter(Boolean)
    .map((m) => `${m.id} (${m.task}${m.dimensions ? `, ${m.dimensions} dims` : ""}, ${m.max_length} tokens)`).join(" · ");
  if (state.embedder) {
    state.hidden = state.embedder.dimensions;
    $("dim").min = String(Math.min(state.config.min_dimensions, state.hidden));
    $("dim").max = String(state.hidden);
    $("dim").value = String(state.hidden);
    $("dim-value").textContent = `${state.hidden} (full)`;
  }
  document.querySelector('[data-tab="compare"]').hidden = !state.embedder;
  document.querySelector('[data-tab="rerank"]').hidden = !state.reranker;
  document.querySelector('#tokens-side option[value="rerank"]').hidden = !state.reranker;
  for (const v of ["query", "document"]) document.querySelector(`#tokens-side option[value="${v}"]`).hidden = !state.embedder;
  if (!state.embedder) { $("tokens-side").value = "rerank"; $("tokens-side").dispatchEvent(new Event("change")); showTab("rerank"); }
}

async function waitReady() {
  for (;;) {
    try {
      const resp = await fetch("/health");
      if (resp.ok) { $("status").textContent = "ready"; $("status").className = "status ok"; return; }
      $("status").textContent = "models loading…";
    } catch (err) {
      $("status").textContent = "server unreachable";
    }
    await new Promise((res) => setTimeout(res, 1000));
  }
}

async function start() {
  for (const b of document.querySelectorAll("[data-tab]")) b.addEventListener("click", () => showTab(b.dataset.tab));
  $("run").addEventListener("click", () => guarded($("run"), runCompare));
  $("rerank-run").addEventListener("click", () => guarded($("rerank-run"), runRerank));
  $("search-run").addEventListener("click", () => guarded($("search-run"), runSearch));
  $("tokens-run").addEventListener("click", () => guarded($("tokens-run"), runTokens));
  $("instruction").addEventListener("change", () => { $("custom-box").hidden = $("instruction").value !== "custom"; });
  $("dim").addEventListener("input", () => {
    const v = Number($("dim").value);
    $("dim-value").textContent = v >= state.hidden ? `${v} (full)` : String(v);
  });
  $("tokens-side").addEventListener("change", () => {
    const pair = $("tokens-side").value === "rerank";
    $("tokens-doc-box").hidden = !pair;
    $("tokens-input-label").textContent = pair ? "Query" : "Text";
  });
  $("api-key").addEventListener("change", () => {
    state.key = $("api-key").value.trim();
    clearError();
    loadModels().catch(showError);
  });
  try {
    const resp = await fetch("/playground/config.json");
    state.config = await resp.json();
  } catch (err) {
    showError(new ApiError(`Could not reach the server: ${err.message}`));
    return;
  }
  fillInstructions();
  $("key-box").hidden = !state.config.auth_required;
  document.querySelector('[data-tab="search"]').hidden = !state.config.search;
  await waitReady();
  if (!state.config.auth_required) await loadModels().catch(showError);
  else $("models").textContent = "This server needs an API key: type it above (it stays in this page only).";
  document.body.dataset.ready = "true";
}

document.addEventListener("DOMContentLoaded", start);
