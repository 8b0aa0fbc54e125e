// Bot speech playback on the audio thread: a queue of resampled chunks, flushable at once.
//
// Messages from the main thread (port):
//   {type: "format", sampleRate}  the server's output rate (bot-ready audio_out.sample_rate)
//   {type: "audio", pcm}          one server frame, Int16Array mono at that rate
//   {type: "end"}                 the utterance is complete: play out the resampler's tail too
//   {type: "flush"}               interruption: drop everything queued, now
// Messages to the main thread:
//   {type: "started"}             output went from silence to bot audio (first sample rendered)
//   {type: "progress", ...}       every PROGRESS_MS while playing
//   {type: "drained", ...}        the queue ran empty after playing
//   {type: "flushed", ...}        answer to "flush": the queue is empty
// All but "started" carry framesPlayed (server frames whose last sample was rendered, ever) and
// playedMs (bot audio rendered in this session, cumulative, as client-playback reports it).

import { Resampler } from "./resampler.js";

const PROGRESS_MS = 100;

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = null;
    this.queue = []; // [{samples: Float32Array, frameEnd: bool}], oldest first
    this.offset = 0; // samples of queue[0] already rendered
    this.playing = false;
    this.played = 0; // bot audio samples rendered (at `sampleRate`), cumulative
    this.framesPlayed = 0; // server frames fully rendered, cumulative
    this.sinceProgress = 0;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(message) {
    if (message.type === "format") {
      this.resampler = new Resampler(message.sampleRate, sampleRate);
    } else if (message.type === "audio" && this.resampler !== null) {
      const pcm = message.pcm;
      const floats = new Float32Array(pcm.length);
      for (let i = 0; i < pcm.length; i++) floats[i] = pcm[i] / 32768;
      // The resampler holds back ~2 ms of input, so a frame's output ends slightly after its input;
      // counting a frame as played when this chunk (its share) is rendered is close enough.
      this.queue.push({ samples: this.resampler.process(floats), frameEnd: true });
    } else if (message.type === "end" && this.resampler !== null) {
      this.queue.push({ samples: this.resampler.flush(), frameEnd: false });
    } else if (message.type === "flush") {
      this.queue = [];
      this.offset = 0;
      if (this.resampler !== null) this.resampler.reset();
      this.playing = false;
      this.report("flushed");
    }
  }

  report(type) {
    this.port.postMessage({ type, framesPlayed: this.framesPlayed, playedMs: Math.round((1000 * this.played) / sampleRate) });
  }

  process(_inputs, outputs) {
    const out = outputs[0]; // [C][128]
    const quantum = out[0].length;
    let written = 0;
    while (written < quantum && this.queue.length > 0) {
      const head = this.queue[0];
      const n = Math.min(quantum - written, head.samples.length - this.offset);
      out[0].set(head.samples.subarray(this.offset, this.offset + n), written);
      written += n;
      this.offset += n;
      if (this.offset === head.samples.length) {
        this.queue.shift();
        this.offset = 0;
        if (head.frameEnd) this.framesPlayed++;
      }
    }
    out[0].fill(0, written); // silence after the queue runs dry
    for (let c = 1; c < out.length; c++) out[c].set(out[0]); // same sound on every channel

    if (written > 0 && !this.playing) {
      this.playing = true;
      this.sinceProgress = 0;
      this.port.postMessage({ type: "started" });
    }
    if (this.playing) {
      this.played += written;
      this.sinceProgress += quantum;
      if (this.sinceProgress * 1000 >= PROGRESS_MS * sampleRate) {
        this.sinceProgress = 0;
        this.report("progress");
      }
      if (this.queue.length === 0) {
        this.playing = false;
        this.report("drained");
      }
    }
    return true;
  }
}

registerProcessor("minivox-playback", PlaybackProcessor);
