// The /ui page: a picked file plays here (a local object URL, never uploaded twice); /classify and /timeline
// answers are drawn as cards and as a timeline of three lanes (the fused label, the audio's and the video's own
// opinion) that follows the video as it plays; a click on a window seeks there. live.js adds the live mode.
"use strict";
const $ = (id) => document.getElementById(id);
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7",
                 "#9c755f", "#6b7280"];
const LANES = ["fused", "audio", "video"];
const MAX_WINDOWS = 1200;  // windows kept on the page (a long live session stays flat in memory)
const colours = new Map();
const pct = (p) => (100 * p).toFixed(1) + "%";

function escape(text) {
  const d = document.createElement("div"); d.textContent = String(text); return d.innerHTML;
}

function colour(label) {
  if (!colours.has(label)) { colours.set(label, PALETTE[colours.size % PALETTE.length]); drawLegend(); }
  return colours.get(label);
}

function drawLegend() {
  $("legend").innerHTML = [...colours].map(([label, c]) =>
    `<span class="key" data-label="${escape(label)}"><span class="chip" style="background:${c}"></span>` +
    `${escape(label)}</span>`).join("") +
    `<span class="key sub">paler: less sure</span>` +
    `<span class="key sub"><span class="chip" style="background:repeating-linear-gradient(45deg,#d5d8de 0 3px,` +
    `#f0f1f4 3px 6px)"></span>no such track in that window</span>`;
}

// ---- the timeline: windows -> lanes, legend, axis, playhead ----------------------------------------------
const Timeline = {
  windows: [], hop: null, follow: null, duration: null, current: -1, onSeek: null,

  reset(note = "", options = {}) {
    this.windows = []; this.hop = options.hop || null; this.follow = options.follow || null;
    this.duration = options.duration || null; this.current = -1;
    for (const lane of LANES) $(`lane-${lane}`).textContent = "";
    $("windows").textContent = ""; $("axis").textContent = ""; $("playhead").style.display = "none";
    $("timeline-note").textContent = note;
  },

  add(w) {
    $("timeline-view").hidden = false;
    this.windows.push(w);
    if (this.windows.length > MAX_WINDOWS) this.windows.splice(0, this.windows.length - MAX_WINDOWS);
    for (const lane of LANES) { const o = this.opinion(w, lane); if (o) colour(o.label); }
    this.render();
  },

  opinion(w, lane) {
    if (lane === "fused") return { label: w.label, score: w.score };
    const o = (w.per_modality || {})[lane];
    return o ? { label: o.label, score: o.score, agrees: o.agrees } : null;
  },

  step(w) {
    if (this.hop) return Math.min(this.hop, w.end - w.start);
    const ws = this.windows;
    return ws.length > 1 ? Math.min(ws[1].start - ws[0].start, w.end - w.start) : w.end - w.start;
  },

  extent() {
    const last = this.windows.length ? this.windows[this.windows.length - 1].end : 1;
    if (this.follow) return [Math.max(0, last - this.follow), Math.max(this.follow, last)];
    return [this.windows.length ? Math.min(0, this.windows[0].start) : 0, Math.max(last, this.duration || 0)];
  },

  render() {
    const [t0, t1] = this.extent(), span = Math.max(1e-6, t1 - t0);
    const at = (t) => (100 * (t - t0) / span).toFixed(3) + "%";
    for (const lane of LANES) {
      $(`lane-${lane}`).innerHTML = this.windows.map((w, i) => {
        if (w.end < t0) return "";
        const o = this.opinion(w, lane);
        const pos = `left:${at(w.start)};width:${(100 * this.step(w) / span).toFixed(3)}%`;
        if (!o) return `<i class="none" data-i="${i}" data-lane="${lane}" style="${pos}" ` +
                       `title="${w.start.toFixed(1)}-${w.end.toFixed(1)} s: no ${lane}"></i>`;
        const tip = `${w.start.toFixed(1)}-${w.end.toFixed(1)} s, ${lane}: ${o.label} ${pct(o.score)}`;
        return `<i data-i="${i}" data-lane="${lane}" data-start="${w.start}" data-label="${escape(o.label)}" ` +
               `style="${pos};background:${colour(o.label)};opacity:${(0.3 + 0.7 * o.score).toFixed(3)}" ` +
               `title="${escape(tip)}"></i>`;
      }).join("");
    }
    const tick = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600].find((s) => span / s <= 12) || 1200;
    let ticks = "";
    for (let t = Math.ceil(t0 / tick) * tick; t <= t1 + 1e-9; t += tick) {
      ticks += `<span style="left:${at(t)}">${t}s</span>`;
    }
    $("axis").innerHTML = ticks;
    $("windows").innerHTML = this.windows.slice(-300).map((w) => {
      const a = this.opinion(w, "audio"), v = this.opinion(w, "video");
      return `<tr><td>${w.start.toFixed(2)}</td><td>${w.end.toFixed(2)}</td><td>${escape(w.label)}</td>` +
             `<td>${pct(w.score)}</td><td>${a ? escape(a.label) : "-"}</td><td>${v ? escape(v.label) : "-"}</td></tr>`;
    }).join("");
    this.mark(this.current);
  },

  // the window on screen at time t: the last one that starts at or before t
  at(t) {
    let best = -1;
    this.windows.forEach((w, i) => { if (w.start <= t + 1e-6 && t < w.end) best = i; });
    return best;
  },

  highlight(t) {
    const [t0, t1] = this.extent();
    const head = $("playhead");
    head.style.display = "block";
    head.style.left = `calc(4.2rem + (100% - 4.2rem) * ${Math.min(1, Math.max(0, (t - t0) / (t1 - t0)))})`;
    const i = this.at(t);
    if (i !== this.current) { this.current = i; this.mark(i); if (i >= 0) showCurrent(this.windows[i]); }
  },

  mark(i) {
    document.querySelectorAll(".lane .cells i.current").forEach((e) => e.classList.remove("current"));
    document.querySelectorAll("#windows tr.current").forEach((e) => e.classList.remove("current"));
    if (i < 0) return;
    document.querySelectorAll(`.lane .cells i[data-i="${i}"]`).forEach((e) => e.classList.add("current"));
  },
};

for (const lane of LANES) {
  $(`lane-${lane}`).addEventListener("click", (event) => {
    const cell = event.target.closest("i[data-i]");
    if (!cell || !Timeline.onSeek) return;
    Timeline.onSeek(Timeline.windows[Number(cell.dataset.i)]);
  });
}

// ---- cards --------------------------------------------------------------------------------------------
function bars(probs, top = 6) {
  return Object.entries(probs).sort((a, b) => b[1] - a[1]).slice(0, top).map(([c, p]) =>
    `<div class="bar"><span class="name"><span class="chip" style="background:${colour(c)}"></span>` +
    `${escape(c)}</span>` +
    `<span class="track"><i style="width:${(100 * p).toFixed(1)}%;background:${colour(c)}"></i></span>` +
    `<span class="val">${pct(p)}</span></div>`).join("");
}

function opinions(perModality) {
  return Object.entries(perModality || {}).map(([m, v]) =>
    `<div class="opinion ${v.agrees ? "" : "disagree"}" data-modality="${m}"><b>${m}</b>` +
    `<span><span class="chip" style="background:${colour(v.label)}"></span>${escape(v.label)} ${pct(v.score)}</span>` +
    `<span class="sub">${v.agrees ? "agrees" : "disagrees"} with the fused label</span></div>`).join("");
}

function showResult(r) {
  $("result").hidden = false; $("hint").hidden = true;
  $("label").textContent = r.label;
  $("label").style.color = colour(r.label);
  $("score").textContent = pct(r.score);
  const t = r.timings_ms || {};
  $("meta").textContent = `${r.file} | modalities: ${r.modalities.join(" + ")} | backend ${r.backend} | ` +
    `decode ${t.decode?.toFixed(0)} ms, features ${t.features?.toFixed(0)} ms, infer ${t.infer?.toFixed(0)} ms`;
  const w = r.window;
  $("span").textContent = !w ? "" : r.windows
    ? `whole file: ${r.windows.length} windows, ${w.start.toFixed(2)}-${w.end.toFixed(2)} s`
    : `classified ${w.start.toFixed(2)}-${w.end.toFixed(2)} s of the file (the model's window); ` +
      "Timeline classifies the whole file";
  $("probs").innerHTML = bars(r.probs);
  $("modalities").innerHTML = opinions(r.per_modality);
}

function showCurrent(w, prefix = "at the playhead") {
  $("current").hidden = false; $("hint").hidden = true;
  $("current-span").textContent = `${prefix}: window ${w.start.toFixed(2)}-${w.end.toFixed(2)} s`;
  $("current-label").textContent = w.label;
  $("current-chip").style.background = colour(w.label);
  $("current-score").textContent = pct(w.score) + (w.modalities ? `  [${w.modalities.join(" + ")}]` : "");
  $("current-modalities").innerHTML = opinions(w.per_modality);
}

// ---- a picked file: it plays here; its answers follow it ----------------------------------------------
const player = $("player");
let objectUrl = null;

function reset() {
  $("error").textContent = ""; $("result").hidden = true; $("current").hidden = true;
  $("timeline-view").hidden = true; $("hint").hidden = false;
  colours.clear(); drawLegend();
  Timeline.reset("", { duration: Number.isFinite(player.duration) ? player.duration : null });
}

function showFile(file) {
  if (objectUrl) URL.revokeObjectURL(objectUrl);
  objectUrl = URL.createObjectURL(file);  // the file plays from the disk: it is not sent again to play it
  player.srcObject = null; player.src = objectUrl; player.controls = true; player.muted = false;
  player.hidden = false; $("player-empty").hidden = true;
  reset();
}

player.addEventListener("loadedmetadata", () => {
  if (player.srcObject) return;
  if (Number.isFinite(player.duration)) { Timeline.duration = player.duration; Timeline.render(); }
});
for (const e of ["timeupdate", "seeked"]) {
  player.addEventListener(e, () => {
    if (!player.srcObject && Timeline.windows.length) Timeline.highlight(player.currentTime);
  });
}
Timeline.onSeek = (w) => {
  if (player.srcObject || !player.src) return;
  player.currentTime = w.start + 1e-3;
  Timeline.highlight(w.start + 1e-3);
};

function upload() {
  const file = $("file").files[0];
  if (!file) { $("error").textContent = "Pick a file first."; return null; }
  const body = new FormData(); body.append("video", file); return body;
}

async function failText(resp) {
  try { return (await resp.json()).error; } catch { return `HTTP ${resp.status}`; }
}

async function classify(event) {
  event.preventDefault(); reset();
  const body = upload(); if (!body) return;
  $("status").textContent = "Classifying...";
  try {
    const resp = await fetch("/classify", { method: "POST", body });
    if (!resp.ok) { $("error").textContent = await failText(resp); return; }
    const r = await resp.json();
    showResult(r);
    Timeline.reset("the model's first window; Timeline classifies the whole file",
                   { duration: Timeline.duration || null });
    Timeline.add({ ...r.window, label: r.label, score: r.score, per_modality: r.per_modality,
                   modalities: r.modalities });
  } catch (e) { $("error").textContent = String(e); }
  finally { $("status").textContent = ""; }
}

async function timeline() {
  reset();
  const body = upload(); if (!body) return;
  $("status").textContent = "Streaming windows...";
  Timeline.reset("click a window to play from there",
                 { duration: Number.isFinite(player.duration) ? player.duration : null });
  try {
    const resp = await fetch("/timeline", { method: "POST", body });
    if (!resp.ok) { $("error").textContent = await failText(resp); return; }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl).trim(); buffer = buffer.slice(nl + 1);
        if (!line) continue;
        const item = JSON.parse(line);
        if (item.error) $("error").textContent = item.error;
        else if (item.windows) showResult(item);
        else Timeline.add(item);
      }
      if (done) break;
    }
    if (Timeline.windows.length) Timeline.highlight(player.currentTime || 0);
  } catch (e) { $("error").textContent = String(e); }
  finally { $("status").textContent = ""; }
}

$("file").addEventListener("change", () => { const f = $("file").files[0]; if (f) showFile(f); });
$("form").addEventListener("submit", classify);
$("timeline").addEventListener("click", timeline);
drawLegend();
