/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.lucene;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;

import org.apache.lucene.analysis.Tokenizer;
import org.apache.lucene.analysis.tokenattributes.CharTermAttribute;
import org.apache.lucene.analysis.tokenattributes.OffsetAttribute;

/**
 * The {@code lsr_os_wordpiece} tokenizer: a Lucene tokenizer over {@link BertWordPiece}; every word
 * piece is a token at its own position (increment 1), so a query's pieces become separate SHOULD
 * term clauses whose scores add up.
 *
 * <p>It reads the whole input at {@link #reset()}: queries are short, and WordPiece needs whole
 * words anyway. Empty input gives no tokens (index creation resets a tokenizer on empty input).
 * Its settings, on every engine: {@link #VOCAB_PATH} and {@link #VOCAB_SHA256} (see
 * {@link Vocabulary#forTokenizer}).
 */
public final class WordPieceTokenizer extends Tokenizer {

    /** The tokenizer type both engines register. */
    public static final String NAME = "lsr_os_wordpiece";
    /** Setting: a vocab.txt relative to the node's config folder (default: the shipped vocabulary). */
    public static final String VOCAB_PATH = "vocab_path";
    /** Setting: the SHA-256 the vocabulary must have. */
    public static final String VOCAB_SHA256 = "vocab_sha256";

    private record Token(String term, int start, int end) {}

    private final CharTermAttribute termAtt = addAttribute(CharTermAttribute.class);
    private final OffsetAttribute offsetAtt = addAttribute(OffsetAttribute.class);
    private final BertWordPiece wordPiece;
    private final List<Token> tokens = new ArrayList<>();
    private final StringBuilder text = new StringBuilder();
    private final char[] buffer = new char[4096];
    private int next;
    private int finalOffset;

    public WordPieceTokenizer(Vocabulary vocabulary) {
        this.wordPiece = new BertWordPiece(vocabulary);
    }

    @Override
    public void reset() throws IOException {
        super.reset();
        text.setLength(0);
        for (int n; (n = input.read(buffer)) != -1;) {
            text.append(buffer, 0, n);
        }
        tokens.clear();
        next = 0;
        wordPiece.tokenize(text.toString(), (term, start, end) -> tokens.add(new Token(term, start, end)));
        finalOffset = correctOffset(text.length());
    }

    @Override
    public boolean incrementToken() {
        if (next >= tokens.size()) {
            return false;
        }
        clearAttributes();
        Token token = tokens.get(next++);
        termAtt.setEmpty().append(token.term());
        offsetAtt.setOffset(correctOffset(token.start()), correctOffset(token.end()));
        return true;
    }

    @Override
    public void end() throws IOException {
        super.end();
        offsetAtt.setOffset(finalOffset, finalOffset);
    }

    @Override
    public void close() throws IOException {
        super.close();
        tokens.clear();
        text.setLength(0);
    }
}
