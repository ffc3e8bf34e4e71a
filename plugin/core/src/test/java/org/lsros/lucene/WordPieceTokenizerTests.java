/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.lucene;

import java.io.IOException;
import java.io.StringReader;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Locale;

import org.apache.lucene.analysis.Analyzer;
import org.apache.lucene.analysis.Tokenizer;
import org.apache.lucene.tests.analysis.BaseTokenStreamTestCase;

/** The tokenizer as Lucene sees it, and how its settings pick and check a vocabulary. */
public class WordPieceTokenizerTests extends BaseTokenStreamTestCase {

    private static Tokenizer shipped() {
        return new WordPieceTokenizer(Vocabulary.shipped());
    }

    public void testTokensOffsetsAndPositionsFromTheShippedVocabulary() throws IOException {
        Tokenizer tokenizer = shipped();
        tokenizer.setReader(new StringReader("Two dogs, naïve puppies 😀!"));
        assertTokenStreamContents(tokenizer,
            new String[] { "two", "dogs", ",", "naive", "pup", "##pies", "[UNK]", "!" },
            new int[] { 0, 4, 8, 10, 16, 19, 24, 26 },
            new int[] { 3, 8, 9, 15, 19, 23, 26, 27 },
            new int[] { 1, 1, 1, 1, 1, 1, 1, 1 },
            27);
    }

    public void testEmptyAndBlankInputGiveNoTokens() throws IOException {
        Tokenizer tokenizer = shipped();
        for (String text : new String[] { "", " ", "\t\n\u3000", "\u0000\u200B" }) {
            tokenizer.setReader(new StringReader(text));
            assertTokenStreamContents(tokenizer, new String[0], new int[0], new int[0], text.length());
        }
    }

    public void testRandomTextKeepsTheTokenStreamContract() throws IOException {
        Analyzer analyzer = new Analyzer() {
            @Override
            protected TokenStreamComponents createComponents(String fieldName) {
                return new TokenStreamComponents(shipped());
            }
        };
        checkRandomData(random(), analyzer, 300); // offsets, reset/close, repeatability, with random char filters
        checkResetException(analyzer, "unwanted running");
        analyzer.close();
    }

    public void testTheShippedVocabularyIsBertUncasedAndLoadedOnce() {
        Vocabulary shipped = Vocabulary.shipped();
        assertSame(shipped, Vocabulary.shipped());
        assertSame(shipped, Vocabulary.forTokenizer("pieces", createTempDir(), null, null));
        assertEquals(30522, shipped.size());
        assertEquals("07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3", shipped.sha256());
    }

    public void testAVocabularyFromTheConfigFolderAndItsChecksum() throws IOException {
        Path config = createTempDir();
        Files.createDirectories(config.resolve("vocab"));
        Path file = Files.writeString(config.resolve("vocab").resolve("small.txt"), "[UNK]\nun\n##want\n##ed\n");
        Vocabulary small = Vocabulary.forTokenizer("pieces", config, "vocab/small.txt", null);
        assertSame(small, Vocabulary.load(file));
        Tokenizer tokenizer = new WordPieceTokenizer(small);
        tokenizer.setReader(new StringReader("unwanted wanted"));
        assertTokenStreamContents(tokenizer, new String[] { "un", "##want", "##ed", "[UNK]" });

        String sha = small.sha256();
        assertSame(small, Vocabulary.forTokenizer("pieces", config, "vocab/small.txt", sha.toUpperCase(Locale.ROOT)));
        IllegalArgumentException wrong = expectThrows(IllegalArgumentException.class,
            () -> Vocabulary.forTokenizer("pieces", config, "vocab/small.txt", "0".repeat(64)));
        assertTrue(wrong.getMessage(), wrong.getMessage().startsWith("tokenizer [pieces]: vocab_sha256 [" + "0".repeat(64) + "] does not match"));
        assertTrue(wrong.getMessage(), wrong.getMessage().contains(sha));
        IllegalArgumentException shipped = expectThrows(IllegalArgumentException.class,
            () -> Vocabulary.forTokenizer("pieces", config, null, sha));
        assertTrue(shipped.getMessage(), shipped.getMessage().contains("does not match the vocabulary [the shipped vocab.txt]"));
    }

    public void testAVocabularyOutsideTheConfigFolderMissingOrWithoutUnkIsRefused() throws IOException {
        Path config = createTempDir().resolve("config");
        Files.createDirectories(config);
        Files.writeString(config.resolveSibling("outside.txt"), "[UNK]\n");
        for (String path : new String[] { "../outside.txt", "vocab/none.txt" }) {
            IllegalArgumentException e = expectThrows(IllegalArgumentException.class,
                () -> Vocabulary.forTokenizer("pieces", config, path, null));
            assertTrue(e.getMessage(), e.getMessage().contains("vocab_path [" + path + "] must name a file inside the config folder"));
        }
        Files.writeString(config.resolve("plain.txt"), "a\nb\n");
        IllegalArgumentException noUnk = expectThrows(IllegalArgumentException.class,
            () -> Vocabulary.forTokenizer("pieces", config, "plain.txt", null));
        assertTrue(noUnk.getMessage(), noUnk.getMessage().startsWith("tokenizer [pieces]: the vocabulary ["));
        assertTrue(noUnk.getMessage(), noUnk.getMessage().endsWith("has no [UNK] token"));
    }
}
