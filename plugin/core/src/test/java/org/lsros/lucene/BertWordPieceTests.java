/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.lucene;

import java.util.ArrayList;
import java.util.List;

import org.apache.lucene.tests.util.LuceneTestCase;

/**
 * The tokenization rules, without Lucene: Hugging Face's BERT tokenizer test cases (basic
 * tokenizer, accents, Chinese, WordPiece on its small vocabulary, offsets around special tokens)
 * and the edges (empty input, the 100-character limit, controls inside words).
 */
public class BertWordPieceTests extends LuceneTestCase {

    /** The small vocabulary of transformers' WordPiece test. */
    private static final Vocabulary SMALL = Vocabulary.of(List.of(
        "[UNK]", "[CLS]", "[SEP]", "want", "##want", "##ed", "wa", "un", "runn", "##ing", ",", "low", "lowest"));

    private static Vocabulary bert() {
        return Vocabulary.shipped();
    }

    private static List<String> tokens(Vocabulary vocabulary, String text) {
        List<String> out = new ArrayList<>();
        new BertWordPiece(vocabulary).tokenize(text, (term, start, end) -> out.add(term));
        return out;
    }

    private static List<String> spans(Vocabulary vocabulary, String text) {
        List<String> out = new ArrayList<>();
        new BertWordPiece(vocabulary).tokenize(text, (term, start, end) -> out.add(term + "@" + start + "-" + end));
        return out;
    }

    public void testWordPieceIsGreedyLongestMatchAndAWholeWordBecomesUnknown() {
        assertEquals(List.of("un", "##want", "##ed", "runn", "##ing"), tokens(SMALL, "unwanted running"));
        assertEquals(List.of("[UNK]", "runn", "##ing"), tokens(SMALL, "unwantedX running"));
        assertEquals(List.of("low", "##want"), tokens(SMALL, "lowwant")); // "lowest" is no prefix of it
        assertEquals(List.of(), tokens(SMALL, ""));
    }

    public void testBasicTokenizerLowercasesSplitsPunctuationAndStripsAccents() {
        Vocabulary bert = bert();
        assertEquals(List.of("hello", "!", "how", "are", "you", "?"), tokens(bert, " \tHeLLo!how  \n Are yoU?  "));
        assertEquals(List.of("hall", "##o", "!", "how", "are", "you", "?"), tokens(bert, " \tHäLLo!how  \n Are yoU?  "));
        assertEquals(List.of("ah", "\u535A", "[UNK]", "z", "##z"), tokens(bert, "ah\u535A\u63A8zz"));
        assertEquals(List.of("cafe", "os", "##ter", "##re", "##ich"), tokens(bert, "Café ÖSTERREICH"));
    }

    public void testOffsetsAroundSpecialTokensAndStrippedAccents() {
        // transformers' test_offsets_with_special_characters, for bert-base-uncased
        assertEquals(List.of("a@0-1", ",@1-2", "naive@3-8", "[MASK]@9-15", "allen@16-21", "##nl@21-23", "##p@23-24",
            "sentence@25-33", ".@33-34"), spans(bert(), "A, naïve [MASK] AllenNLP sentence."));
        assertEquals(List.of("x@0-1", "[CLS]@1-6", "y@6-7"), spans(bert(), "x[CLS]y")); // matched in the raw text
        assertEquals(List.of("[@0-1", "cl@1-3", "##s@3-4", "]@4-5"), spans(bert(), "[cls]")); // case matters
    }

    public void testControlsAreDroppedInsideAWordAndSpacesSplit() {
        Vocabulary bert = bert();
        assertEquals(List.of("ab@0-3"), spans(bert, "a\u200Db")); // a format character: still one word
        assertEquals(List.of("x@1-2", "##y@3-4", "##z@5-6"), spans(bert, "\u000Bx\u000Cy\u0085z"));
        assertEquals(List.of("x@0-1", "y@2-3"), spans(bert, "x\u2028y"));
        assertEquals(List.of(), tokens(bert, " \t\u3000\u0000\uFFFD"));
    }

    public void testSupplementaryCharactersKeepUtf16Offsets() {
        assertEquals(List.of("[UNK]@0-6"), spans(bert(), "😀🥺🫠"));
        assertEquals(List.of("[UNK]@0-2", "a@3-4"), spans(bert(), "𝐀 a"));
    }

    public void testHangulDecomposesIntoJamoThatShareTheSyllablesOffsets() {
        assertEquals(List.of("ᄒ@0-1", "##ᅡ@0-1", "##ᆫ@0-1"), spans(bert(), "한"));
    }

    public void testAWordOverOneHundredCharactersIsUnknown() {
        Vocabulary bert = bert();
        assertEquals(50, tokens(bert, "a".repeat(100)).size());
        assertEquals(List.of("[UNK]@0-101"), spans(bert, "a".repeat(101)));
        assertEquals(List.of("[UNK]@0-201"), spans(bert, "e\u0301".repeat(101))); // 101 letters once the accents go
        assertEquals(List.of("[UNK]@0-34"), spans(bert, "한".repeat(34))); // 102 jamo after NFD
    }

    public void testTheCharacterTablesAreSortedDisjointRanges() {
        for (int[] table : new int[][] { BertCharTable.DROPPED, BertCharTable.SPACE, BertCharTable.PUNCTUATION }) {
            assertEquals(0, table.length % 2);
            for (int i = 0; i < table.length; i += 2) {
                assertTrue(table[i] <= table[i + 1]);
                assertTrue(i == 0 || table[i] > table[i - 1] + 1);
            }
        }
        assertTrue(BertWordPiece.in(BertCharTable.PUNCTUATION, '!'));
        assertFalse(BertWordPiece.in(BertCharTable.PUNCTUATION, 'a'));
        assertTrue(BertWordPiece.in(BertCharTable.DROPPED, 0x0301));
        assertTrue(BertWordPiece.in(BertCharTable.SPACE, 0x3000));
    }
}
