// minivox browser client: microphone -> WebSocket -> server; server events and speech -> page.
//
// Wire protocol (docs/protocol.md, DESIGN.md §7), all on one WebSocket at /ws:
//   client -> server  JSON {"type": "client-ready", ...} first, then binary frames of
//                     uint32 LE seq (from 0) + pcm_s16le mono 16 kHz (20 ms each), and JSON
//                     actions (reset-context) and playback reports (client-playback)
//   server -> client  JSON events (bot-ready, user-transcription, bot-llm-text, interruption, ...)
//                     and binary frames of uint32 LE seq + pcm_s16le mono at audio_out.sample_rate
// Audio runs on the audio thread in two worklets: capture-worklet.js (resample to 16 kHz, frame)
// and playback-worklet.js (resample to the context rate, queue, flush on interruption).
//
// `window.minivox` exposes the session's counters and event log (read by tests/browser/).

import { reducedRatio } from "./resampler.js";

const PROTOCOL_VERSION = 1;
const MIC_RATE = 16000; // what client-ready declares and capture-worklet.js produces
const FALLBACK_CONTEXT_RATE = 48000; // used when the device rate has no small ratio to 16 kHz
const MAX_EVENTS = 2000; // events kept in window.minivox.events
const SEQ_BYTES = 4; // uint32 little-endian sequence number before every audio frame

const $ = (id) => document.getElementById(id);

const stats = {
  state: "idle", // idle | starting | connecting | ready | closed | failed
  sessionId: null,
  events: [], // every JSON event received, oldest first (the newest MAX_EVENTS)
  interimTranscripts: 0,
  finalTranscripts: 0,
  micFramesSent: 0,
  botAudioFramesReceived: 0,
  botAudioFramesPlayed: 0, // server frames fully rendered by the playback worklet
  playbackStarts: 0, // silence -> bot audio transitions
  botAudioPlaying: false, // between a playback start and the queue running dry (or a flush)
  playedMs: 0, // bot audio played this session (ms), as sent in client-playback
  flushedAt: null, // performance.now() when the playback queue was last flushed
  interruptions: 0,
  latencies: [], // [{turnId, localMs, serverMs}], one per turn with a reply
  errors: [], // [{code, message, fatal}] from error events and local failures
  muted: false,
  audioContextRate: null, // Hz: the rate the worklets resample from (capture) and to (playback)
};
window.minivox = stats;

// ---------------------------------------------------------------------------------------------
// Page state
// ---------------------------------------------------------------------------------------------

let ws = null; // WebSocket
let audio = null; // {context, stream, capture, playback} while started
let micSeq = 0; // next outgoing frame's sequence number
let stoppedSpeakingAt = null; // performance.now() of the last user-stopped-speaking, until reply audio plays
let botTurn = null; // turn_id of the bot reply being shown
const botLines = new Map(); // turn_id -> {li, text (llm text so far)}
let interimLine = null; // <li> with the user's interim text, replaced by the final one
let partial = null; // an event whose long "text" arrives split in parts, being joined
let session = 0; // counts connections: turn ids start again in each

function setState(state, text) {
  stats.state = state;
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text;
  const live = state === "connecting" || state === "ready";
  $("start").disabled = live || state === "starting";
  $("stop").disabled = !live;
  $("mute").disabled = state !== "ready";
  $("reset").disabled = state !== "ready";
}

function showError(code, message, fatal = false) {
  stats.errors.push({ code, message, fatal });
  const p = document.createElement("p");
  p.textContent = `${fatal ? "Error (session ended)" : "Error"}: ${message} [${code}]`;
  $("errors").append(p);
}

// ---------------------------------------------------------------------------------------------
// Transcript
// ---------------------------------------------------------------------------------------------

function addLine(who, text, className = "") {
  const li = document.createElement("li");
  if (className) li.className = className;
  if (who) {
    const label = document.createElement("span");
    label.className = "who";
    label.textContent = `${who}:`;
    li.append(label);
  }
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  li.append(body);
  $("transcript").append(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

function showUserText(text, final) {
  if (!final) {
    stats.interimTranscripts++;
    if (interimLine === null) {
      interimLine = addLine("You", text, "interim");
      interimLine.setAttribute("aria-hidden", "true"); // screen readers get the final text only
    } else {
      interimLine.querySelector(".text").textContent = text;
    }
    return;
  }
  stats.finalTranscripts++;
  if (interimLine !== null) interimLine.remove();
  interimLine = null;
  if (text.trim()) addLine("You", text.trim());
}

function botLine(turnId) {
  if (!botLines.has(turnId)) {
    const li = addLine("minivox", "");
    li.setAttribute("aria-busy", "true"); // announce once complete, not token by token
    botLines.set(turnId, { li, text: "" });
  }
  return botLines.get(turnId);
}

function appendBotText(turnId, piece) {
  const line = botLine(turnId);
  line.text += piece;
  line.li.querySelector(".text").textContent = line.text.trim();
}

// ---------------------------------------------------------------------------------------------
// Latency table
// ---------------------------------------------------------------------------------------------

function latencyRow(turnId) {
  let row = stats.latencies.find((r) => r.session === session && r.turnId === turnId);
  if (!row) {
    row = { session, turnId, localMs: null, serverMs: null, tr: document.createElement("tr") };
    $("latency").tBodies[0].append(row.tr);
    stats.latencies.push(row);
  }
  return row;
}

function renderLatency(row) {
  const cell = (v) => `<td>${v === null || v === undefined ? "–" : Math.round(v)}</td>`;
  const turn = row.session > 1 ? `${row.session}.${row.turnId ?? "?"}` : `${row.turnId ?? "?"}`; // session.turn
  row.tr.innerHTML = `<td>${turn}</td>${cell(row.localMs)}${cell(row.serverMs)}`;
}

// ---------------------------------------------------------------------------------------------
// Server events
// ---------------------------------------------------------------------------------------------

/** A long text arrives as events with "part": i, "parts": n; returns the whole event once complete, else null. */
function joinParts(ev) {
  if (ev.parts === undefined) return ev;
  if (ev.part === 0) partial = { ...ev, text: "" };
  if (partial === null || partial.type !== ev.type) return null; // a stray part: nothing to join it to
  partial.text += ev.text ?? "";
  if (ev.part < ev.parts - 1) return null;
  const { part, parts, ...whole } = partial;
  partial = null;
  return whole;
}

function onEvent(message) {
  stats.events.push({ ...message, receivedAt: performance.now() });
  if (stats.events.length > MAX_EVENTS) stats.events.shift();
  const ev = joinParts(message);
  if (ev === null) return;
  switch (ev.type) {
    case "bot-ready":
      stats.sessionId = ev.session_id ?? null;
      audio.playback.port.postMessage({ type: "format", sampleRate: ev.audio_out.sample_rate });
      setState("ready", `connected${stats.sessionId ? ` (session ${stats.sessionId})` : ""}, listening`);
      break;
    case "user-started-speaking":
      $("status").textContent = "connected, hearing you";
      break;
    case "user-stopped-speaking":
      stoppedSpeakingAt = performance.now();
      $("status").textContent = "connected, listening";
      break;
    case "user-transcription":
      showUserText(ev.text ?? "", Boolean(ev.final));
      break;
    case "bot-llm-started":
      botTurn = ev.turn_id ?? null;
      botLine(botTurn);
      break;
    case "bot-llm-text":
      appendBotText(ev.turn_id ?? botTurn, ev.text ?? "");
      break;
    case "bot-transcription": {
      // The spoken sentences; they repeat bot-llm-text, except what the server says on its own
      // (an apology after a timeout), which is shown here.
      const line = botLine(ev.turn_id ?? botTurn);
      if (!line.text.includes((ev.text ?? "").trim())) appendBotText(ev.turn_id ?? botTurn, ` ${ev.text}`);
      break;
    }
    case "bot-llm-stopped":
      botLine(ev.turn_id ?? botTurn).li.setAttribute("aria-busy", "false");
      break;
    case "bot-tts-stopped":
      audio.playback.port.postMessage({ type: "end" }); // play the resampler's tail too
      break;
    case "interruption": {
      audio.playback.port.postMessage({ type: "flush" }); // first: stop the sound at once
      stats.interruptions++;
      const line = botLines.get(ev.turn_id ?? botTurn);
      if (line) {
        line.li.classList.add("interrupted");
        line.li.setAttribute("aria-busy", "false");
      }
      break;
    }
    case "metrics": {
      if (ev.voice_to_voice_ms !== undefined && ev.voice_to_voice_ms !== null) {
        const row = latencyRow(ev.turn_id ?? botTurn);
        row.serverMs = ev.voice_to_voice_ms;
        renderLatency(row);
      }
      break;
    }
    case "error":
      showError(ev.code ?? "error", ev.message ?? "unknown error", Boolean(ev.fatal));
      break;
    default:
      break; // bot-tts-started and future events: kept in stats.events only
  }
}

function onBotAudio(data) {
  // data: ArrayBuffer, uint32 LE seq + int16 LE samples (read with DataView: endian-safe)
  const view = new DataView(data);
  if (data.byteLength < SEQ_BYTES || (data.byteLength - SEQ_BYTES) % 2 !== 0) {
    showError("bad-audio-frame", `expected 4 + 2k bytes of audio, got ${data.byteLength}`);
    return;
  }
  const pcm = new Int16Array((data.byteLength - SEQ_BYTES) / 2);
  for (let i = 0; i < pcm.length; i++) pcm[i] = view.getInt16(SEQ_BYTES + 2 * i, true);
  stats.botAudioFramesReceived++;
  audio.playback.port.postMessage({ type: "audio", pcm }, [pcm.buffer]);
}

function onPlaybackMessage(message) {
  if (message.type === "started") {
    stats.playbackStarts++;
    stats.botAudioPlaying = true;
    if (stoppedSpeakingAt !== null) {
      const row = latencyRow(botTurn);
      row.localMs = performance.now() - stoppedSpeakingAt;
      renderLatency(row);
      stoppedSpeakingAt = null;
    }
    return;
  }
  stats.botAudioFramesPlayed = message.framesPlayed;
  stats.playedMs = message.playedMs;
  if (message.type === "drained" || message.type === "flushed") {
    stats.botAudioPlaying = false;
    if (message.type === "flushed") stats.flushedAt = performance.now();
    send({ type: "client-playback", played_ms: message.playedMs });
  }
}

// ---------------------------------------------------------------------------------------------
// Microphone frames out
// ---------------------------------------------------------------------------------------------

function send(message) {
  if (ws !== null && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
}

function onMicFrame(pcm) {
  // pcm: Int16Array [320] = 20 ms at 16 kHz. While muted nothing is sent and no seq is used.
  if (stats.muted || ws === null || ws.readyState !== WebSocket.OPEN) return;
  const frame = new ArrayBuffer(SEQ_BYTES + 2 * pcm.length);
  const view = new DataView(frame);
  view.setUint32(0, micSeq++, true);
  for (let i = 0; i < pcm.length; i++) view.setInt16(SEQ_BYTES + 2 * i, pcm[i], true);
  ws.send(frame);
  stats.micFramesSent++;
}

// ---------------------------------------------------------------------------------------------
// Start / stop
// ---------------------------------------------------------------------------------------------

async function startAudio() {
  let context = new AudioContext({ latencyHint: "interactive" });
  if (reducedRatio(context.sampleRate, MIC_RATE) === null) { // e.g. an odd hardware rate
    await context.close();
    context = new AudioContext({ latencyHint: "interactive", sampleRate: FALLBACK_CONTEXT_RATE });
  }
  await context.audioWorklet.addModule("capture-worklet.js");
  await context.audioWorklet.addModule("playback-worklet.js");
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
  });
  const capture = new AudioWorkletNode(context, "minivox-capture", { numberOfOutputs: 0 });
  context.createMediaStreamSource(stream).connect(capture);
  capture.port.onmessage = (event) => onMicFrame(event.data);
  const playback = new AudioWorkletNode(context, "minivox-playback", { outputChannelCount: [1] });
  playback.connect(context.destination);
  playback.port.onmessage = (event) => onPlaybackMessage(event.data);
  for (const node of [capture, playback]) {
    node.onprocessorerror = () => showError("audio-worklet", "the audio processing thread failed", true);
  }
  await context.resume(); // Start is a user gesture, so this is allowed
  stats.audioContextRate = context.sampleRate;
  return { context, stream, capture, playback };
}

function stopAudio() {
  if (audio === null) return;
  for (const track of audio.stream.getTracks()) track.stop();
  audio.context.close();
  audio = null;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${scheme}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  // A new session: sequence numbers and turn ids start again.
  session++;
  micSeq = 0;
  botLines.clear();
  botTurn = null;
  interimLine?.remove();
  interimLine = null;
  partial = null;
  stoppedSpeakingAt = null;
  if (session > 1) addLine("", "New session.", "note");
  ws.onopen = () => {
    send({
      type: "client-ready",
      version: PROTOCOL_VERSION,
      audio: { sample_rate: MIC_RATE, channels: 1, encoding: "pcm_s16le" },
    });
  };
  ws.onmessage = (event) => {
    if (typeof event.data === "string") {
      let ev;
      try {
        ev = JSON.parse(event.data);
      } catch {
        showError("bad-json", `the server sent text that is not JSON: ${event.data.slice(0, 80)}`);
        return;
      }
      onEvent(ev);
    } else {
      onBotAudio(event.data);
    }
  };
  ws.onclose = (event) => {
    const why = event.reason ? `: ${event.reason}` : "";
    setState("closed", `disconnected (code ${event.code}${why})`);
    ws = null;
    stopAudio();
  };
  // onerror carries no detail in browsers; onclose follows with the code.
}

async function start() {
  setState("starting", "starting the microphone");
  try {
    audio = await startAudio();
  } catch (error) {
    const what = error.name === "NotAllowedError" ? "microphone permission was denied" : `${error.name}: ${error.message}`;
    showError("audio-start", `could not start audio (${what})`, true);
    setState("failed", "not connected");
    stopAudio();
    return;
  }
  setState("connecting", "connecting");
  connect();
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", () => ws?.close(1000, "user stopped"));
$("mute").addEventListener("click", () => {
  stats.muted = !stats.muted;
  $("mute").setAttribute("aria-pressed", String(stats.muted));
  $("mute").textContent = stats.muted ? "Unmute microphone" : "Mute microphone";
});
$("reset").addEventListener("click", () => {
  send({ type: "action", action: "reset-context" });
  addLine("", "Conversation reset: minivox forgets what was said.", "note");
});
