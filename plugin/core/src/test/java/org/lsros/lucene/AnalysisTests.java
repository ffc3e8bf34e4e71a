/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.lucene;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;

import org.apache.lucene.analysis.Analyzer;
import org.apache.lucene.analysis.TokenStream;
import org.apache.lucene.analysis.Tokenizer;
import org.apache.lucene.analysis.core.WhitespaceTokenizer;
import org.apache.lucene.analysis.tokenattributes.CharTermAttribute;
import org.apache.lucene.analysis.tokenattributes.TermFrequencyAttribute;
import org.apache.lucene.tests.analysis.BaseTokenStreamTestCase;

/** The index analyzer of folded text and the query side's unique filter. */
public class AnalysisTests extends BaseTokenStreamTestCase {

    /** term@freq of every token of {@code text}. */
    private static List<String> termsAndFreqs(Analyzer analyzer, String text) throws IOException {
        List<String> out = new ArrayList<>();
        try (TokenStream stream = analyzer.tokenStream("text", text)) {
            CharTermAttribute term = stream.addAttribute(CharTermAttribute.class);
            TermFrequencyAttribute freq = stream.addAttribute(TermFrequencyAttribute.class);
            stream.reset();
            while (stream.incrementToken()) {
                out.add(term + "@" + freq.getTermFrequency());
            }
            stream.end();
        }
        return out;
    }

    public void testFoldedTextBecomesTermsWithTheirFrequencies() throws IOException {
        try (Analyzer folded = FoldedAnalyzer.fromSetting("f", null)) {
            assertEquals(List.of("blue@98304", "##s@1", "[CLS]@7", "u.s.@2147483647", "bare@1"),
                termsAndFreqs(folded, "blue\u000198304 ##s\u00011  [CLS]\u00017\tu.s.\u00012147483647\nbare"));
            assertEquals(List.of(), termsAndFreqs(folded, " "));
            assertTokenStreamContents(folded.tokenStream("text", "dog\u00013 cat\u00011"), new String[] { "dog", "cat" },
                new int[] { 0, 6 }, new int[] { 5, 11 }, new int[] { 1, 1 });
        }
        try (Analyzer caret = FoldedAnalyzer.fromSetting("f", "^")) {
            assertEquals(List.of("dog@250", "beach@80"), termsAndFreqs(caret, "dog^250 beach^80"));
        }
    }

    public void testFoldedTextRefusesWhatLuceneCannotCount() throws IOException {
        try (Analyzer folded = FoldedAnalyzer.fromSetting("f", null)) {
            for (String bad : new String[] { "dog\u00010", "dog\u00012.5", "dog\u00012147483648" }) {
                expectThrows(IllegalArgumentException.class, () -> termsAndFreqs(folded, bad));
            }
        }
        for (String bad : new String[] { "", "||" }) {
            IllegalArgumentException e = expectThrows(IllegalArgumentException.class, () -> FoldedAnalyzer.fromSetting("f", bad));
            assertEquals("analyzer [f]: delimiter must be one character, got [" + bad + "]", e.getMessage());
        }
        assertEquals('\u0001', FoldedAnalyzer.fromSetting("f", "\u0001").delimiter());
    }

    public void testUniqueKeepsTheFirstOccurrenceOfEachTerm() throws IOException {
        Analyzer unique = new Analyzer() {
            @Override
            protected TokenStreamComponents createComponents(String fieldName) {
                Tokenizer source = new WhitespaceTokenizer();
                return new TokenStreamComponents(source, new UniqueTermFilter(source));
            }
        };
        assertAnalyzesTo(unique, "dog beach dog the beach cat", new String[] { "dog", "beach", "the", "cat" },
            new int[] { 0, 4, 14, 24 }, new int[] { 3, 9, 17, 27 }, new int[] { 1, 1, 2, 2 });
        assertAnalyzesTo(unique, "dog dog", new String[] { "dog" }); // and the set starts empty for each text
        assertAnalyzesTo(unique, "dog", new String[] { "dog" });
        checkRandomData(random(), unique, 200);
        unique.close();
    }

    public void testTheQueryAnalyzerCountsARepeatedPieceOnce() throws IOException {
        Analyzer query = new Analyzer() {
            @Override
            protected TokenStreamComponents createComponents(String fieldName) {
                Tokenizer source = new WordPieceTokenizer(Vocabulary.shipped());
                return new TokenStreamComponents(source, new UniqueTermFilter(source));
            }
        };
        assertAnalyzesTo(query, "Stars, two STARS and a star!", new String[] { "stars", ",", "two", "and", "a", "star", "!" });
        checkRandomData(random(), query, 200);
        query.close();
    }
}
