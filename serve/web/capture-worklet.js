// Microphone capture on the audio thread: AudioContext rate -> 16 kHz mono Int16, 20 ms frames.
//
// Each render quantum (128 samples per channel at `sampleRate`) is mixed down to mono, passed
// through the windowed-sinc resampler (which low-passes below 8 kHz before decimating, so nothing
// above the new Nyquist folds back), and collected into frames of FRAME_SAMPLES. Every full frame
// is posted to the main thread as an Int16Array (its buffer transferred, not copied).

import { Resampler } from "./resampler.js";

const OUT_RATE = 16000; // what the server's ASR wants (and what client-ready declares)
const FRAME_MS = 20;
const FRAME_SAMPLES = (OUT_RATE * FRAME_MS) / 1000; // 320

/** float in [-1, 1] -> int16, rounded and clipped. */
const toInt16 = (x) => Math.max(-32768, Math.min(32767, Math.round(x * 32767)));

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(sampleRate, OUT_RATE); // `sampleRate`: the AudioWorkletGlobalScope's rate
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.filled = 0; // samples in `frame`
  }

  process(inputs) {
    const channels = inputs[0]; // [C][128]; empty while the source is not connected
    if (channels.length === 0) return true;
    const mono = new Float32Array(channels[0].length);
    for (const channel of channels) for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / channels.length;
    for (const x of this.resampler.process(mono)) {
      this.frame[this.filled++] = toInt16(x);
      if (this.filled === FRAME_SAMPLES) {
        this.port.postMessage(this.frame, [this.frame.buffer]);
        this.frame = new Int16Array(FRAME_SAMPLES);
        this.filled = 0;
      }
    }
    return true; // keep running while the node exists
  }
}

registerProcessor("minivox-capture", CaptureProcessor);
