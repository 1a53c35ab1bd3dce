// Live mode of the /ui page: the camera and microphone (getUserMedia) are recorded in 250-ms chunks
// (MediaRecorder) and sent over a WebSocket to /live/ws, where the server decodes the growing stream in a decode
// process and answers one line per window as it is classified; the lanes scroll with the last minute.
// window.mmLive holds what a test or a curious user may read: state, firstResultMs, latencyMs, windows, summary.
"use strict";
const CHUNK_MS = 250;
const SHOWN_S = 60;  // seconds of live timeline on screen
const live = { ws: null, stream: null, recorder: null, t0: null };
window.mmLive = { state: "idle", firstResultMs: null, latencyMs: null, windows: 0, dropped: 0, summary: null,
                  error: null };

function selectTab(name) {
  const isLive = name === "live";
  $("tab-file").setAttribute("aria-selected", String(!isLive));
  $("tab-live").setAttribute("aria-selected", String(isLive));
  $("form").hidden = isLive; $("live-controls").hidden = !isLive;
  if (!isLive) stopLive(true);
}
$("tab-file").addEventListener("click", () => selectTab("file"));
$("tab-live").addEventListener("click", () => selectTab("live"));

function recorderType() {
  for (const [mime, type] of [["video/webm;codecs=vp8,opus", "webm"], ["video/webm", "webm"], ["video/mp4", "mp4"]]) {
    if (window.MediaRecorder && MediaRecorder.isTypeSupported(mime)) return { mime, type };
  }
  return null;
}

function say(text) {
  const li = document.createElement("li"); li.textContent = text;
  const list = $("events"); list.hidden = false; list.appendChild(li);
  while (list.children.length > 30) list.removeChild(list.firstChild);
  list.scrollTop = list.scrollHeight;
}

function liveFailed(text) {
  $("error").textContent = text; window.mmLive.error = text; stopLive(true);
}

async function startLive() {
  reset();
  $("error").textContent = ""; $("events").textContent = ""; $("events").hidden = true;
  Object.assign(window.mmLive, { state: "starting", firstResultMs: null, latencyMs: null, windows: 0, dropped: 0,
                                 summary: null, error: null });
  const kind = recorderType();
  if (!kind) return liveFailed("This browser cannot record video (no MediaRecorder for WebM or MP4).");
  try {
    live.stream = await navigator.mediaDevices.getUserMedia({
      audio: true, video: { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 25 } } });
  } catch (e) { return liveFailed(`No camera and microphone: ${e.message || e}`); }
  if (objectUrl) { URL.revokeObjectURL(objectUrl); objectUrl = null; }
  player.removeAttribute("src"); player.srcObject = live.stream; player.muted = true; player.controls = false;
  player.hidden = false; $("player-empty").hidden = true;
  player.play().catch(() => {});
  $("live-start").disabled = true; $("live-stop").disabled = false;
  $("live-stats").hidden = false;
  $("status").textContent = "Connecting...";
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/live/ws?window=0&hop=1&type=${kind.type}`);
  live.ws = ws;
  ws.onmessage = (event) => onLine(JSON.parse(event.data), kind);
  ws.onerror = () => { if (live.ws === ws) liveFailed("The live connection failed."); };
  ws.onclose = () => {
    if (live.ws !== ws) return;
    live.ws = null; window.mmLive.state = "closed"; stopLive(true);
  };
}

function onLine(line, kind) {
  if (line.ready) {
    Timeline.reset(`live: the last ${SHOWN_S} s`, { hop: line.ready.hop, follow: SHOWN_S });
    $("timeline-view").hidden = false;
    live.recorder = new MediaRecorder(live.stream, { mimeType: kind.mime, videoBitsPerSecond: 800000,
                                                     audioBitsPerSecond: 64000 });
    live.recorder.ondataavailable = (e) => {
      if (e.data && e.data.size && live.ws && live.ws.readyState === WebSocket.OPEN) live.ws.send(e.data);
    };
    live.recorder.start(CHUNK_MS);
    live.t0 = performance.now();
    window.mmLive.state = "streaming";
    $("status").textContent = `Streaming (${line.ready.window} s windows every ${line.ready.hop} s, ` +
                              `backend ${line.ready.backend})...`;
  } else if (line.probs) {
    const mm = window.mmLive;
    if (mm.firstResultMs === null) {
      mm.firstResultMs = performance.now() - live.t0;
      $("stat-first").textContent = `${(mm.firstResultMs / 1000).toFixed(2)} s`;
    }
    mm.windows += 1; mm.latencyMs = line.latency_ms; mm.dropped = line.dropped;
    $("stat-latency").textContent = `${line.latency_ms.toFixed(0)} ms`;
    $("stat-windows").textContent = String(mm.windows);
    $("stat-dropped").textContent = String(line.dropped);
    Timeline.add(line);
    showCurrent(line, "live");
    Timeline.mark(Timeline.windows.length - 1);
  } else if (line.event) {
    if (line.event === "dropped") {
      window.mmLive.dropped = line.dropped; $("stat-dropped").textContent = String(line.dropped);
    }
    say(line.message);
  } else if (line.summary) {
    const s = line.summary, lat = s.latency_ms;
    window.mmLive.summary = s;
    $("status").textContent = `Stopped: ${s.windows} windows, ${s.dropped} dropped` +
      (lat.p50 !== null ? `, latency p50 ${lat.p50} ms, p99 ${lat.p99} ms` : "");
  } else if (line.error) {
    $("error").textContent = line.error; window.mmLive.error = line.error;
  }
}

function stopLive(quiet = false) {
  if (live.recorder && live.recorder.state !== "inactive") live.recorder.stop();
  live.recorder = null;
  if (live.stream) live.stream.getTracks().forEach((t) => t.stop());
  live.stream = null;
  if (live.ws && live.ws.readyState === WebSocket.OPEN) {
    live.ws.send(JSON.stringify({ stop: true }));  // the server finishes the windows it has, then the summary
    if (!quiet) $("status").textContent = "Stopping...";
  }
  $("live-start").disabled = false; $("live-stop").disabled = true;
}

$("live-start").addEventListener("click", startLive);
$("live-stop").addEventListener("click", () => stopLive(false));
