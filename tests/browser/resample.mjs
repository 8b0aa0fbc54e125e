// Run serve/web/resampler.js under node for tests/test_browser.py (no browser needed).
//
//   node tests/browser/resample.mjs serve/web/resampler.js < cases.json > outputs.json
//
// stdin: [{inRate, outRate, signal: [numbers], chunks: [chunk sizes summing to signal.length]}]
// stdout: [{up, down, W, output: [numbers]}]: the chunks fed to one Resampler, then flush().
// The module is imported from a data: URL, so node needs no package.json "type" for it.

import { readFileSync } from "node:fs";

const source = readFileSync(process.argv[2], "utf8");
const { Resampler } = await import(`data:text/javascript;base64,${Buffer.from(source).toString("base64")}`);
const cases = JSON.parse(readFileSync(0, "utf8"));
const results = cases.map(({ inRate, outRate, signal, chunks }) => {
  const resampler = new Resampler(inRate, outRate);
  const output = [];
  let at = 0;
  for (const size of chunks) {
    output.push(...resampler.process(Float32Array.from(signal.slice(at, at + size))));
    at += size;
  }
  output.push(...resampler.flush());
  return { up: resampler.up, down: resampler.down, W: resampler.W, output };
});
process.stdout.write(JSON.stringify(results));
