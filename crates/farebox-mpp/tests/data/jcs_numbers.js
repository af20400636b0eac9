// Writes jcs_numbers.txt: `<IEEE 754 bits as 16 hex digits>,<JSON.stringify of that double>`,
// one line per double, the format of the ES6 number test file RFC 8785 Appendix B refers to.
// ECMAScript (node) is the oracle; the seed is fixed, so `node jcs_numbers.js > jcs_numbers.txt`
// reproduces the committed file. Covered: every power of ten a double can hold and its two
// neighbours (where the decimal/exponent forms switch), integers around 2^53 and 2^64, random
// bit patterns, and random short decimals (what other SDKs' requests carry).
'use strict';
let seed = 0x8785n;
function next() { // xorshift64*
  seed ^= seed >> 12n; seed ^= (seed << 25n) & 0xffffffffffffffffn; seed ^= seed >> 27n;
  return (seed * 0x2545f4914f6cdd1dn) & 0xffffffffffffffffn;
}
const buf = Buffer.alloc(8);
const bits = (d) => { buf.writeDoubleBE(d, 0); return buf.readBigUInt64BE(0); };
const fromBits = (b) => { buf.writeBigUInt64BE(b, 0); return buf.readDoubleBE(0); };
const seen = new Set();
const out = [];
function add(b) {
  b &= 0xffffffffffffffffn;
  const d = fromBits(b);
  if (!Number.isFinite(d) || seen.has(b)) return;
  seen.add(b);
  out.push(b.toString(16).padStart(16, '0') + ',' + JSON.stringify(d));
}
const around = (d) => { const b = bits(d); add(b - 1n); add(b); add(b + 1n); };
for (let k = -324; k <= 308; k++) around(Number('1e' + k));
for (let n = 50; n <= 70; n++) { around(2 ** n); around(-(2 ** n)); }
around(0); add(bits(-0)); around(Number.MIN_VALUE); around(Number.MAX_VALUE);
for (let i = 0; i < 1000; i++) add(next());
for (let i = 0; i < 1000; i++) {
  const digits = 1 + Number(next() % 17n);
  let m = '';
  for (let j = 0; j < digits; j++) m += String(Number(next() % 10n));
  const e = Number(next() % 61n) - 30;
  const sign = next() % 2n ? '-' : '';
  add(bits(Number(sign + m + 'e' + e)));
}
process.stdout.write(out.join('\n') + '\n');
