/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.lucene;

import org.apache.lucene.analysis.Analyzer;
import org.apache.lucene.analysis.Tokenizer;
import org.apache.lucene.analysis.core.WhitespaceTokenizer;
import org.apache.lucene.analysis.miscellaneous.DelimitedTermFrequencyTokenFilter;

/**
 * The {@code lsr_os_folded} analyzer: a document's folded text, {@code term<delimiter>freq ...},
 * becomes each term with that frequency (Lucene's whitespace tokenizer and delimited term frequency
 * filter). The plugin registers it because an engine may lack its own versions of those two
 * (Elasticsearch's integration-test distribution has no analysis-common module).
 *
 * <p>The default delimiter is U+0001, a control character BERT's tokenizer deletes from any text:
 * no vocabulary term and no query piece can contain it. The field it feeds must index frequencies
 * only (Lucene refuses positions with a custom term frequency).
 */
public final class FoldedAnalyzer extends Analyzer {

    /** The analyzer type both engines register. */
    public static final String NAME = "lsr_os_folded";
    /** Setting: the one character between a term and its frequency. */
    public static final String DELIMITER = "delimiter";
    public static final char DEFAULT_DELIMITER = '\u0001';

    private final char delimiter;

    public FoldedAnalyzer(char delimiter) {
        this.delimiter = delimiter;
    }

    /** From the analyzer's {@link #DELIMITER} setting (null: the default). Throws IllegalArgumentException. */
    public static FoldedAnalyzer fromSetting(String name, String delimiter) {
        if (delimiter == null) {
            return new FoldedAnalyzer(DEFAULT_DELIMITER);
        }
        if (delimiter.length() != 1) {
            throw new IllegalArgumentException("analyzer [" + name + "]: " + DELIMITER + " must be one character, got ["
                + delimiter + "]");
        }
        return new FoldedAnalyzer(delimiter.charAt(0));
    }

    char delimiter() {
        return delimiter;
    }

    @Override
    protected TokenStreamComponents createComponents(String fieldName) {
        Tokenizer source = new WhitespaceTokenizer();
        return new TokenStreamComponents(source, new DelimitedTermFrequencyTokenFilter(source, delimiter));
    }
}
