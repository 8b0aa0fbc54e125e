// Streaming polyphase resampler: Kaiser-windowed sinc, the same design as minivox/audio.py.
//
// Used on the audio thread by both worklets (microphone rate -> 16 kHz, bot 22.05 kHz ->
// AudioContext rate) and tested against minivox.audio.resample (tests/test_browser.py).
//
// The ideal resampler evaluates the band-limited interpolant of x at the output times:
//     y[n] = sum_k x[k] h(n * down / up - k),   h(tau) = c * sinc(c * tau) * kaiser(tau / halfWidth)
// with up / down = outRate / inRate reduced by their gcd, tau in input samples and c the cutoff as
// a fraction of the input Nyquist. Output n lies between inputs q = floor(n * down / up) and q + 1
// at phase p = (n * down) mod up: only `up` distinct phases exist, so the taps are tabulated once
// (the polyphase bank, TAPS[p][j] = h(p / up + W - j)) and output n reads x[q - W .. q + W].
// The cutoff sits below the lower Nyquist, so downsampling low-passes first (no aliasing) and
// upsampling removes the spectral images.

export const STOPBAND_DB = 80; // alias rejection the window is designed for
export const TRANSITION = 0.1; // transition band as a fraction of the lower Nyquist: flat to 90 %
export const KAISER_BETA = 0.1102 * (STOPBAND_DB - 8.7); // Kaiser's formula for A > 50 dB -> 7.857
// Kaiser's length estimate N = (A - 7.95) / (14.36 * df), df = TRANSITION * band / 2 cycles/sample;
// the half-length N / 2 counted in sinc zero crossings (spaced 1 / band inputs) is rate-independent:
export const ZERO_CROSSINGS = (STOPBAND_DB - 7.95) / (14.36 * TRANSITION); // ~50.2
export const MAX_RATIO_TERM = 1000; // up and down after gcd reduction; 44100 -> 16000 is 160 / 441

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** Modified Bessel function of the first kind, order 0 (power series; converges fast for x < 30). */
function besselI0(x) {
  let sum = 1, term = 1;
  for (let k = 1; k < 50; k++) {
    term *= (x / (2 * k)) ** 2;
    sum += term;
    if (term < 1e-17 * sum) break;
  }
  return sum;
}

const sinc = (x) => (x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x));

/** The reduced ratio {up, down} of outRate / inRate, or null when a term exceeds MAX_RATIO_TERM. */
export function reducedRatio(inRate, outRate) {
  const g = gcd(inRate, outRate);
  const up = outRate / g, down = inRate / g;
  return Math.max(up, down) > MAX_RATIO_TERM ? null : { up, down };
}

export class Resampler {
  /**
   * @param {number} inRate  input sample rate, Hz (positive integer)
   * @param {number} outRate output sample rate, Hz (positive integer)
   */
  constructor(inRate, outRate) {
    for (const [name, rate] of [["inRate", inRate], ["outRate", outRate]]) {
      if (!Number.isInteger(rate) || rate < 1) throw new RangeError(`${name}: expected a positive integer, got ${rate}`);
    }
    const ratio = reducedRatio(inRate, outRate);
    if (ratio === null) {
      throw new RangeError(`rate ratio ${outRate}/${inRate}: expected terms <= ${MAX_RATIO_TERM} after gcd ` +
        `reduction (e.g. 16000, 22050, 24000, 32000, 44100, 48000, 96000 Hz)`);
    }
    this.inRate = inRate;
    this.outRate = outRate;
    this.up = ratio.up;
    this.down = ratio.down;
    const identity = this.up === this.down;
    const band = Math.min(1, this.up / this.down); // the lower Nyquist, as a fraction of the input Nyquist
    this.cutoff = band * (1 - TRANSITION / 2); // centre of the transition band
    this.halfWidth = identity ? 0.5 : ZERO_CROSSINGS / band; // kernel support |tau| < halfWidth inputs
    this.W = identity ? 0 : Math.ceil(this.halfWidth); // output n reads x[q - W .. q + W]
    this.taps = this.#tabulate(); // [up][2W + 1]
    this.reset();
  }

  /** h(tau) for tau in input samples; its samples at tau + integers sum to ~1 (unit DC gain). */
  kernel(tau) {
    if (this.up === this.down) return tau === 0 ? 1 : 0;
    if (Math.abs(tau) >= this.halfWidth) return 0;
    const inside = tau / this.halfWidth;
    const window = besselI0(KAISER_BETA * Math.sqrt(1 - inside * inside)) / besselI0(KAISER_BETA);
    return this.cutoff * sinc(this.cutoff * tau) * window;
  }

  #tabulate() {
    const width = 2 * this.W + 1;
    const taps = [];
    for (let p = 0; p < this.up; p++) {
      const row = new Float64Array(width); // row[j] = h(p / up + W - j)
      for (let j = 0; j < width; j++) row[j] = this.kernel(p / this.up + this.W - j);
      taps.push(row);
    }
    return taps;
  }

  /** Forget the stream: the next chunk starts a new signal at time 0. */
  reset() {
    // The buffer holds inputs from absolute index `start` on; it begins with W zeros at -W .. -1
    // because the signal is taken as zero before time 0 (so output 0 sits exactly on input 0).
    this.buffer = new Float64Array(Math.max(64, 4 * this.W));
    this.start = -this.W;
    this.length = this.W; // valid samples in `buffer`
    this.samplesIn = 0; // inputs seen
    this.samplesOut = 0; // outputs emitted (the next output's index n)
  }

  #append(chunk) {
    if (this.length + chunk.length > this.buffer.length) {
      const grown = new Float64Array(Math.max(2 * this.buffer.length, this.length + chunk.length));
      grown.set(this.buffer.subarray(0, this.length));
      this.buffer = grown;
    }
    this.buffer.set(chunk, this.length);
    this.length += chunk.length;
  }

  /** Outputs n = samplesOut .. while x[q + W] is below `available` (an absolute input index bound). */
  #emit(available) {
    const out = [];
    const { up, down, W, taps, buffer } = this;
    for (;;) {
      const n = this.samplesOut;
      const q = Math.floor((n * down) / up); // input just before output n's time
      if (q + W >= available) break;
      const row = taps[(n * down) % up];
      const first = q - W - this.start; // buffer index of x[q - W]
      let acc = 0;
      for (let j = 0; j < row.length; j++) acc += buffer[first + j] * row[j];
      out.push(acc);
      this.samplesOut++;
    }
    // Drop the inputs no later output needs (the next one reads from x[q_next - W]).
    const keepFrom = Math.floor((this.samplesOut * down) / up) - W;
    const drop = Math.min(Math.max(0, keepFrom - this.start), this.length);
    if (drop > 0) {
      buffer.copyWithin(0, drop, this.length);
      this.length -= drop;
      this.start += drop;
    }
    return Float32Array.from(out);
  }

  /**
   * Feed chunk [S_chunk] (Float32Array or any array of numbers); returns the outputs that became
   * computable, Float32Array [S_out]. Latency: W + 1 input samples (3.2 ms for 48 kHz -> 16 kHz).
   */
  process(chunk) {
    this.#append(chunk);
    this.samplesIn += chunk.length;
    return this.#emit(this.samplesIn);
  }

  /**
   * End the stream: pad with zeros, return the remaining outputs so that the whole stream has
   * ceil(samplesIn * up / down) of them, and reset.
   */
  flush() {
    const total = Math.ceil((this.samplesIn * this.up) / this.down);
    const needed = total - this.samplesOut;
    const zeros = 2 * this.W + this.down + 1; // enough for every output up to time samplesIn
    this.#append(new Float64Array(zeros));
    const rest = this.#emit(this.samplesIn + zeros);
    this.reset();
    return rest.subarray(0, Math.max(0, needed));
  }
}
