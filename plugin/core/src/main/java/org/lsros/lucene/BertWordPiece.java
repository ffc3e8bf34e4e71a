/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.lucene;

import java.text.Normalizer;
import java.util.Arrays;

/**
 * BERT-uncased tokenization: the basic tokenizer (clean, split CJK, strip accents, lowercase,
 * split on whitespace and punctuation) followed by greedy longest-match WordPiece.
 *
 * <p>The reference is Hugging Face's fast tokenizer ({@code tokenizers}: BertNormalizer with
 * lowercase and accent stripping, BertPreTokenizer, WordPiece with {@code ##} continuations and at
 * most 100 characters a word). Its steps run in its order: special tokens are matched on the raw
 * text first; then per character: drop, space, CJK padding, NFD with nonspacing marks removed, and
 * lowercasing. Each token's offsets span the original characters its first and last normalized
 * characters came from, in UTF-16 units of the input.
 */
final class BertWordPiece {

    /** A word longer than this (in normalized code points) becomes {@code [UNK]}. */
    static final int MAX_CHARS_PER_WORD = 100;
    private static final String CONTINUATION = "##";

    /** Receives tokens in order: the term and its [start, end) offsets into the input. */
    interface TokenSink {
        void token(String term, int start, int end);
    }

    private final Vocabulary vocabulary;

    BertWordPiece(Vocabulary vocabulary) {
        this.vocabulary = vocabulary;
    }

    /** Tokenize {@code text}, handing each token to {@code sink}. */
    void tokenize(String text, TokenSink sink) {
        Word word = new Word();
        int from = 0;
        while (from < text.length()) {
            int special = -1;
            String match = null;
            for (String s : vocabulary.specials()) { // leftmost match; the special tokens never overlap
                int at = text.indexOf(s, from);
                if (at >= 0 && (special < 0 || at < special)) {
                    special = at;
                    match = s;
                }
            }
            int end = special < 0 ? text.length() : special;
            normalize(text, from, end, word, sink);
            if (match == null) {
                break;
            }
            sink.token(match, special, special + match.length());
            from = special + match.length();
        }
    }

    /** The basic tokenizer over text[from, to): words go through WordPiece, punctuation stands alone. */
    private void normalize(String text, int from, int to, Word word, TokenSink sink) {
        for (int i = from; i < to;) {
            int cp = Character.codePointAt(text, i);
            int next = Math.min(to, i + Character.charCount(cp));
            if ((cp >= Character.MIN_SURROGATE && cp <= Character.MAX_SURROGATE) || in(BertCharTable.DROPPED, cp)) {
                // removed (a lone surrogate too); the word goes on: "a\u200db" is the one word "ab"
            } else if (in(BertCharTable.SPACE, cp)) {
                flush(word, sink);
            } else if (isChinese(cp)) {
                flush(word, sink);
                appendNormalized(cp, i, next, word, sink);
                flush(word, sink);
            } else {
                appendNormalized(cp, i, next, word, sink);
            }
            i = next;
        }
        flush(word, sink);
    }

    /** NFD without nonspacing marks, then lowercase; punctuation becomes a token of its own. */
    private void appendNormalized(int cp, int start, int end, Word word, TokenSink sink) {
        String decomposed = cp < 0xC0 ? null : Normalizer.normalize(Character.toString(cp), Normalizer.Form.NFD);
        if (decomposed == null || (decomposed.length() == Character.charCount(cp) && decomposed.codePointAt(0) == cp)) {
            appendChar(Character.toLowerCase(cp), start, end, word, sink);
            return;
        }
        for (int j = 0; j < decomposed.length();) {
            int d = decomposed.codePointAt(j);
            j += Character.charCount(d);
            if (in(BertCharTable.DROPPED, d) == false) {
                appendChar(Character.toLowerCase(d), start, end, word, sink);
            }
        }
    }

    private void appendChar(int cp, int start, int end, Word word, TokenSink sink) {
        if (in(BertCharTable.PUNCTUATION, cp)) {
            flush(word, sink);
            word.add(cp, start, end);
            flush(word, sink);
        } else {
            word.add(cp, start, end);
        }
    }

    /** WordPiece on the collected word, then start a new one. */
    private void flush(Word word, TokenSink sink) {
        int n = word.length;
        if (n == 0) {
            return;
        }
        if (n > MAX_CHARS_PER_WORD) {
            sink.token(Vocabulary.UNK, word.starts[0], word.ends[n - 1]);
            word.clear();
            return;
        }
        String s = new String(word.codePoints, 0, n);
        int[] charAt = new int[n + 1]; // code point index -> char index in s
        for (int k = 0, c = 0; k <= n; k++) {
            charAt[k] = c;
            if (k < n) {
                c += Character.charCount(word.codePoints[k]);
            }
        }
        String[] pieces = new String[n];
        int[] pieceEnds = new int[n];
        int count = 0;
        for (int start = 0; start < n;) {
            int end = n;
            String piece = null;
            for (; end > start; end--) {
                String candidate = s.substring(charAt[start], charAt[end]);
                candidate = start > 0 ? CONTINUATION + candidate : candidate;
                if (vocabulary.contains(candidate)) {
                    piece = candidate;
                    break;
                }
            }
            if (piece == null) { // one piece missing: the whole word is unknown
                sink.token(Vocabulary.UNK, word.starts[0], word.ends[n - 1]);
                word.clear();
                return;
            }
            pieces[count] = piece;
            pieceEnds[count++] = end;
            start = end;
        }
        for (int p = 0, start = 0; p < count; start = pieceEnds[p++]) {
            sink.token(pieces[p], word.starts[start], word.ends[pieceEnds[p] - 1]);
        }
        word.clear();
    }

    /** The CJK ranges of tokenizers' BertNormalizer (its Extension B-F ranges start at U+2B920). */
    static boolean isChinese(int cp) {
        return (cp >= 0x4E00 && cp <= 0x9FFF)
            || (cp >= 0x3400 && cp <= 0x4DBF)
            || (cp >= 0x20000 && cp <= 0x2A6DF)
            || (cp >= 0x2A700 && cp <= 0x2B73F)
            || (cp >= 0x2B740 && cp <= 0x2B81F)
            || (cp >= 0x2B920 && cp <= 0x2CEAF)
            || (cp >= 0xF900 && cp <= 0xFAFF)
            || (cp >= 0x2F800 && cp <= 0x2FA1F);
    }

    /** Whether cp lies in one of the sorted inclusive [first, last] pairs. */
    static boolean in(int[] ranges, int cp) {
        int lo = 0;
        int hi = ranges.length / 2 - 1;
        while (lo <= hi) {
            int mid = (lo + hi) >>> 1;
            if (cp < ranges[2 * mid]) {
                hi = mid - 1;
            } else if (cp > ranges[2 * mid + 1]) {
                lo = mid + 1;
            } else {
                return true;
            }
        }
        return false;
    }

    /** The normalized code points of the word being collected, each with its original offsets. */
    private static final class Word {
        int[] codePoints = new int[16];
        int[] starts = new int[16];
        int[] ends = new int[16];
        int length;

        void add(int cp, int start, int end) {
            if (length == codePoints.length) {
                codePoints = Arrays.copyOf(codePoints, length * 2);
                starts = Arrays.copyOf(starts, length * 2);
                ends = Arrays.copyOf(ends, length * 2);
            }
            codePoints[length] = cp;
            starts[length] = start;
            ends[length++] = end;
        }

        void clear() {
            length = 0;
        }
    }
}
