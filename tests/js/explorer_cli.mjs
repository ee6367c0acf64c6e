// Runs the explorers' JavaScript (book/_static/explorers/explorer.mjs) in node for
// tests/test_explorer.py, which compares the answers with PyTorch.
//
//   node tests/js/explorer_cli.mjs REQUEST.json      prints a JSON answer on stdout
//
// REQUEST is {"decode": {"data": "path/to/<name>.js", "codes": [[...], ...]}} (the decoder's
// outputs for each code, from the data file as a page loads it) and/or
// {"planar": [{"u": [..], "w": [..], "b": .., "points": [[y1, y2], ...]}, ...]} (u_hat, the
// forward map and the log-density of each point for one planar layer over N(0, I)).
import { readFileSync } from "node:fs";
import { runInThisContext } from "node:vm";
import * as ex from "../../book/_static/explorers/explorer.mjs";

const req = JSON.parse(readFileSync(process.argv[2], "utf8"));
const out = {};
if (req.decode) {
  // the data file is a classic script, as <script src> runs it in a page
  runInThisContext(readFileSync(req.decode.data, "utf8"), { filename: req.decode.data });
  const entries = Object.values(globalThis.VAETUT_EXPLORERS);
  if (entries.length !== 1) throw new Error(`expected one decoder in ${req.decode.data}`);
  const data = entries[0];
  if (data.format !== ex.FORMAT) throw new Error(`format ${data.format}`);
  const dec = ex.buildDecoder(data.decoder);
  out.decode = req.decode.codes.map((z) => Array.from(ex.forward(dec, z)));
}
if (req.planar) {
  out.planar = req.planar.map(({ u, w, b, points }) => {
    const uHat = ex.planarUHat(u, w);
    return {
      u_hat: uHat,
      forward: points.map((z) => ex.planarForward(z, uHat, w, b)),
      log_density: points.map((y) => ex.planarLogDensity(y, u, w, b)),
    };
  });
}
// JSON has no infinities: those go as strings ("Infinity", "-Infinity", "NaN")
if (req.half) out.half = req.half.map((h) => { const v = ex.halfToFloat(h); return Number.isFinite(v) ? v : String(v); });
process.stdout.write(JSON.stringify(out));
