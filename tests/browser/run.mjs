// Drive serve/web/ in headless Chromium with a WAV file as the microphone (run by tests/test_browser.py).
//
//   node tests/browser/run.mjs turn --url http://127.0.0.1:PORT/ --wav question.wav [--chromium PATH] [--timeout-ms N]
//   node tests/browser/run.mjs mock --web serve/web --wav speech.wav [--chromium PATH] [--timeout-ms N]
//   (either: --screenshot PAGE.png saves the page as it was at the end)
//
// turn: load the page from a running minivox server, press Start, and wait until the page has seen
//   a final user transcription and has started playing bot audio (window.minivox counters).
// mock: serve the page's files from a local HTTP server and play the minivox server through
//   Playwright's WebSocket routing: check the frames the page sends (client-ready, seq, 20 ms of
//   16 kHz PCM16), mute, reset-context, joined split events, error display, and that an
//   `interruption` empties the playback queue at once.
// Prints one JSON report on stdout ({ok, ..., console, pageErrors}) and exits 0 when the scenario
// ran to its end, 1 if not; tests/test_browser.py makes the assertions on the report.

import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { extname, join } from "node:path";
import { chromium } from "playwright-core";

function parseArgs(argv) {
  const args = { scenario: argv[0], chromium: "/usr/bin/chromium", timeoutMs: 60000 };
  if (args.scenario !== "turn" && args.scenario !== "mock") throw new Error(`expected scenario turn or mock, got ${args.scenario}`);
  for (let i = 1; i < argv.length; i += 2) {
    const [key, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${key}: expected a value`);
    if (key === "--url") args.url = value;
    else if (key === "--web") args.web = value;
    else if (key === "--wav") args.wav = value;
    else if (key === "--chromium") args.chromium = value;
    else if (key === "--timeout-ms") args.timeoutMs = Number(value);
    else if (key === "--screenshot") args.screenshot = value;
    else throw new Error(`unknown argument ${key}; expected --url, --web, --wav, --chromium, --timeout-ms, --screenshot`);
  }
  if (!args.wav) throw new Error("--wav is required");
  if (args.scenario === "turn" && !args.url) throw new Error("turn: --url is required");
  if (args.scenario === "mock" && !args.web) throw new Error("mock: --web is required");
  return args;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const stats = (page) => page.evaluate(() => {
  const { latencies, ...rest } = window.minivox;
  return { ...rest, latencies: latencies.map(({ turnId, localMs, serverMs }) => ({ turnId, localMs, serverMs })) };
});

/**
 * A real turn against a running server: a final transcription, then bot audio playing. The first
 * wait ends TURN_HEARD_S after the WAV has played (the agent has heard all of it by then), so a
 * model that hears nothing fails in seconds; report.stage says how far the turn got.
 */
const TURN_HEARD_S = 10;
async function turnScenario(page, args, report, wavSeconds) {
  const wait = (fn, timeout) => page.waitForFunction(fn, null, { timeout, polling: 50 });
  const t0 = Date.now();
  report.stage = "page";
  await page.goto(args.url);
  await page.getByRole("button", { name: "Start" }).click();
  report.stage = "bot-ready";
  await wait(() => window.minivox.state === "ready", args.timeoutMs);
  report.stage = "final user transcription";
  await wait(() => window.minivox.finalTranscripts >= 1, Math.min(args.timeoutMs, (wavSeconds + TURN_HEARD_S) * 1000));
  report.stage = "bot audio playing";
  await wait(() => window.minivox.playbackStarts >= 1 && window.minivox.botAudioFramesPlayed >= 1,
    Math.max(1000, args.timeoutMs - (Date.now() - t0)));
  report.stage = "done";
  // Not required: let the reply finish, for the latency figures (the server's metrics event).
  await wait(() => window.minivox.events.some((e) => e.type === "metrics") && !window.minivox.botAudioPlaying, 20000)
    .catch(() => { report.note = "no metrics event within 20 s of the reply's start"; });
}

const CONTENT_TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript" };

/** Serve the page's files on localhost (a secure context); worklet modules bypass Playwright's routing. */
async function serveStatic(dir) {
  const server = createServer((request, response) => {
    const path = new URL(request.url, "http://localhost").pathname;
    const name = path === "/" ? "index.html" : path.slice(1);
    const type = CONTENT_TYPES[extname(name)];
    if (name.includes("/") || type === undefined || !existsSync(join(dir, name))) {
      response.writeHead(404, { "Content-Type": "text/plain" }).end("not found");
      return;
    }
    response.writeHead(200, { "Content-Type": type }).end(readFileSync(join(dir, name)));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return server;
}
const BOT_RATE = 22050;

/** A 440 Hz tone as server frames: uint32 LE seq + PCM16 mono, 100 ms each. */
function toneFrames(seconds, firstSeq) {
  const frames = [];
  const perFrame = BOT_RATE / 10;
  for (let f = 0; f < seconds * 10; f++) {
    const frame = Buffer.alloc(4 + 2 * perFrame);
    frame.writeUInt32LE(firstSeq + f, 0);
    for (let i = 0; i < perFrame; i++) {
      const t = (f * perFrame + i) / BOT_RATE;
      frame.writeInt16LE(Math.round(8000 * Math.sin(2 * Math.PI * 440 * t)), 4 + 2 * i);
    }
    frames.push(frame);
  }
  return frames;
}

/** The page against a scripted server: see the header comment. */
async function mockScenario(page, args, report, wavSeconds) {
  const connections = []; // per WebSocket the page opened: {json, frames} it sent
  let server = null;
  const web = await serveStatic(args.web);
  const origin = `localhost:${web.address().port}`;
  await page.routeWebSocket(`ws://${origin}/ws`, (ws) => {
    server = ws;
    const received = { json: [], frames: [] };
    connections.push(received);
    ws.onMessage((message) => {
      if (typeof message === "string") {
        const msg = JSON.parse(message);
        received.json.push({ ...msg, frameIndex: received.frames.length });
        if (msg.type === "client-ready") {
          ws.send(JSON.stringify({ type: "bot-ready", session_id: "mock", version: 1,
            audio_out: { sample_rate: BOT_RATE, channels: 1, encoding: "pcm_s16le" } }));
        }
      } else {
        received.frames.push(message);
      }
    });
  });
  const sendEvent = (ev) => server.send(JSON.stringify(ev));
  const wait = (fn, arg) => page.waitForFunction(fn, arg, { timeout: args.timeoutMs, polling: 20 });

  await page.goto(`http://${origin}/`);
  await page.getByRole("button", { name: "Start" }).click();
  await wait(() => window.minivox.state === "ready");
  const received = connections[0];

  // 1. The whole WAV (plus 300 ms) goes out as 20 ms frames.
  await wait((n) => window.minivox.micFramesSent >= n, Math.ceil((wavSeconds + 0.3) * 50));

  // 2. Mute: nothing is sent for 400 ms, the socket stays open; unmuted, frames flow again.
  await page.getByRole("button", { name: "Mute microphone" }).click();
  await sleep(50);
  const framesAtMute = received.frames.length;
  await sleep(400);
  report.mute = { framesAtMute, framesAfter400ms: received.frames.length,
    state: (await stats(page)).state, pressed: await page.locator("#mute").getAttribute("aria-pressed") };
  await page.getByRole("button", { name: "Unmute microphone" }).click();
  await wait((n) => window.minivox.micFramesSent >= n, (await stats(page)).micFramesSent + 5);

  // 3. Reset the conversation.
  await page.getByRole("button", { name: "Reset conversation" }).click();

  // 4. A user turn whose final text arrives in two parts, an error event, and a bot reply that is
  //    interrupted 300 ms into its 3 s of audio.
  sendEvent({ type: "user-started-speaking" });
  sendEvent({ type: "user-transcription", text: "what tim", final: false, turn_id: 1 });
  sendEvent({ type: "user-stopped-speaking" });
  sendEvent({ type: "user-transcription", text: "what time ", final: true, turn_id: 1, part: 0, parts: 2 });
  sendEvent({ type: "user-transcription", text: "is it", final: true, turn_id: 1, part: 1, parts: 2 });
  sendEvent({ type: "error", code: "llm-timeout", message: "the language model gave no first words within 5 s", fatal: false });
  sendEvent({ type: "bot-llm-started", turn_id: 1 });
  sendEvent({ type: "bot-llm-text", text: "It is noon.", turn_id: 1 });
  sendEvent({ type: "bot-tts-started", turn_id: 1 });
  for (const frame of toneFrames(3, 0)) server.send(frame);
  await wait(() => window.minivox.botAudioPlaying);
  await sleep(300);
  sendEvent({ type: "interruption", turn_id: 1 });
  await wait(() => window.minivox.flushedAt !== null);
  report.atFlush = await stats(page);
  await sleep(500);
  report.afterFlush = await stats(page);
  await sleep(100); // let the last client-playback message arrive

  // 5. Stop closes the socket; Start again opens a new session whose seq starts at 0.
  await page.getByRole("button", { name: "Stop" }).click();
  await wait(() => window.minivox.state === "closed");
  report.stopped = { status: await page.locator("#status").textContent() };
  const sentBefore = (await stats(page)).micFramesSent;
  await page.getByRole("button", { name: "Start" }).click();
  await wait((n) => window.minivox.state === "ready" && window.minivox.micFramesSent >= n, sentBefore + 5);
  report.second = { connections: connections.length, json: connections.at(-1).json,
    seqs: connections.at(-1).frames.map((f) => f.readUInt32LE(0)) };

  report.received = {
    json: received.json,
    frameBytes: [...new Set(received.frames.map((f) => f.length))],
    seqs: received.frames.map((f) => f.readUInt32LE(0)),
    pcmBase64: Buffer.concat(received.frames.map((f) => f.subarray(4))).toString("base64"), // int16 LE, all frames
  };
  report.errorsShown = await page.locator("#errors").textContent();
  web.close();
}

/** Duration of a PCM WAV file in seconds, from its fmt and data chunks. */
function wavSeconds(path) {
  const wav = readFileSync(path);
  let byteRate = null;
  for (let at = 12; at + 8 <= wav.length; at += 8 + wav.readUInt32LE(at + 4) + (wav.readUInt32LE(at + 4) % 2)) {
    const id = wav.toString("ascii", at, at + 4);
    if (id === "fmt ") byteRate = wav.readUInt32LE(at + 16);
    if (id === "data" && byteRate) return wav.readUInt32LE(at + 4) / byteRate;
  }
  throw new Error(`${path}: expected a WAV file with fmt and data chunks`);
}

const args = parseArgs(process.argv.slice(2));
const started = Date.now();
const report = { scenario: args.scenario, ok: false, console: [], pageErrors: [], requestFailures: [] };
const browser = await chromium.launch({
  executablePath: args.chromium,
  headless: true,
  args: [
    "--no-sandbox", // Chromium refuses to run as root with its sandbox (CI containers run as root)
    "--disable-dev-shm-usage", // containers often have a 64 MB /dev/shm, too small for Chromium
    "--use-fake-ui-for-media-stream", // grant getUserMedia without a permission prompt
    "--use-fake-device-for-media-stream", // a fake microphone ...
    `--use-file-for-fake-audio-capture=${args.wav}%noloop`, // ... that plays this WAV once, then silence
    "--autoplay-policy=no-user-gesture-required",
  ],
});
try {
  const page = await browser.newPage();
  page.on("console", (msg) => report.console.push(`${msg.type()}: ${msg.text()}`));
  page.on("pageerror", (error) => report.pageErrors.push(String(error)));
  page.on("requestfailed", (request) => report.requestFailures.push(`${request.url()}: ${request.failure()?.errorText}`));
  try {
    if (args.scenario === "turn") await turnScenario(page, args, report, wavSeconds(args.wav));
    else await mockScenario(page, args, report, wavSeconds(args.wav));
    report.ok = true;
  } catch (error) {
    report.error = String(error).split("\n")[0];
  }
  report.stats = await stats(page);
  report.status = await page.locator("#status").textContent();
  report.transcript = await page.locator("#transcript li").allTextContents();
  if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
} finally {
  await browser.close();
}
report.elapsedMs = Date.now() - started;
// Exit once the report is written: a pipe is written asynchronously, and exit() would cut it short.
process.stdout.write(JSON.stringify(report) + "\n", () => process.exit(report.ok ? 0 : 1));
