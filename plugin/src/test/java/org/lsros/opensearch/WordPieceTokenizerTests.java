/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.opensearch;

import java.io.IOException;
import java.io.StringReader;
import java.nio.file.Files;
import java.nio.file.Path;

import org.apache.lucene.analysis.Analyzer;
import org.apache.lucene.analysis.Tokenizer;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.index.analysis.AnalysisTestsHelper;
import org.opensearch.index.analysis.TokenizerFactory;
import org.opensearch.test.OpenSearchTestCase;
import org.opensearch.test.OpenSearchTokenStreamTestCase;

/** The tokenizer through OpenSearch's analysis module, as an index builds it. */
public class WordPieceTokenizerTests extends OpenSearchTokenStreamTestCase {

    private Path home;

    @Override
    public void setUp() throws Exception {
        super.setUp();
        home = createTempDir();
        ShippedVocabulary.copyTo(home.resolve("plugins").resolve(LsrOsPlugin.NAME).resolve(WordPieceTokenizerFactory.DEFAULT_VOCAB));
        Files.createDirectories(home.resolve("config").resolve("vocab"));
        Files.writeString(home.resolve("config").resolve("vocab").resolve("small.txt"), "[UNK]\nun\n##want\n##ed\n");
    }

    private TokenizerFactory factory(Settings tokenizer) throws IOException {
        Settings settings = Settings.builder()
            .put(Environment.PATH_HOME_SETTING.getKey(), home.toString())
            .put("index.analysis.tokenizer.pieces.type", WordPieceTokenizerFactory.NAME)
            .put(prefixed(tokenizer))
            .build();
        OpenSearchTestCase.TestAnalysis analysis = AnalysisTestsHelper.createTestAnalysisFromSettings(settings, new LsrOsPlugin());
        return analysis.tokenizer.get("pieces");
    }

    private static Settings prefixed(Settings tokenizer) {
        Settings.Builder out = Settings.builder();
        for (String key : tokenizer.keySet()) {
            out.put("index.analysis.tokenizer.pieces." + key, tokenizer.get(key));
        }
        return out.build();
    }

    public void testTokensOffsetsAndPositionsFromTheShippedVocabulary() throws IOException {
        Tokenizer tokenizer = factory(Settings.EMPTY).create();
        tokenizer.setReader(new StringReader("Two dogs, naïve puppies 😀!"));
        assertTokenStreamContents(tokenizer,
            new String[] { "two", "dogs", ",", "naive", "pup", "##pies", "[UNK]", "!" },
            new int[] { 0, 4, 8, 10, 16, 19, 24, 26 },
            new int[] { 3, 8, 9, 15, 19, 23, 26, 27 },
            new int[] { 1, 1, 1, 1, 1, 1, 1, 1 },
            27);
    }

    public void testEmptyAndBlankInputGiveNoTokens() throws IOException {
        Tokenizer tokenizer = factory(Settings.EMPTY).create();
        for (String text : new String[] { "", " ", "\t\n\u3000", "\u0000\u200B" }) {
            tokenizer.setReader(new StringReader(text));
            assertTokenStreamContents(tokenizer, new String[0], new int[0], new int[0], text.length());
        }
    }

    public void testRandomTextKeepsTheTokenStreamContract() throws IOException {
        TokenizerFactory factory = factory(Settings.EMPTY);
        Analyzer analyzer = new Analyzer() {
            @Override
            protected TokenStreamComponents createComponents(String fieldName) {
                return new TokenStreamComponents(factory.create());
            }
        };
        checkRandomData(random(), analyzer, 300); // offsets, reset/close, repeatability, with random char filters
        checkResetException(analyzer, "unwanted running");
        analyzer.close();
    }

    public void testAVocabularyFromTheConfigFolderAndItsChecksum() throws IOException {
        Settings small = Settings.builder().put("vocab_path", "vocab/small.txt").build();
        Tokenizer tokenizer = factory(small).create();
        tokenizer.setReader(new StringReader("unwanted wanted"));
        assertTokenStreamContents(tokenizer, new String[] { "un", "##want", "##ed", "[UNK]" });

        String sha = Vocabulary.load(home.resolve("config").resolve("vocab").resolve("small.txt")).sha256();
        factory(Settings.builder().put(small).put("vocab_sha256", sha.toUpperCase(java.util.Locale.ROOT)).build());
        IllegalArgumentException wrong = expectThrows(IllegalArgumentException.class,
            () -> factory(Settings.builder().put(small).put("vocab_sha256", "0".repeat(64)).build()));
        assertTrue(wrong.getMessage(), wrong.getMessage().contains("vocab_sha256 [" + "0".repeat(64) + "] does not match"));
        assertTrue(wrong.getMessage(), wrong.getMessage().contains(sha));
    }

    public void testAVocabularyOutsideTheConfigFolderOrMissingIsRefused() {
        for (String path : new String[] { "../plugins/lsr-os/vocab.txt", "vocab/none.txt" }) {
            IllegalArgumentException e = expectThrows(IllegalArgumentException.class,
                () -> factory(Settings.builder().put("vocab_path", path).build()));
            assertTrue(e.getMessage(), e.getMessage().contains("vocab_path [" + path + "] must name a file inside the config folder"));
        }
    }

    public void testAVocabularyIsLoadedOncePerFile() {
        Path file = home.resolve("plugins").resolve(LsrOsPlugin.NAME).resolve(WordPieceTokenizerFactory.DEFAULT_VOCAB);
        Vocabulary first = Vocabulary.load(file);
        assertSame(first, Vocabulary.load(file));
        assertEquals(30522, first.size());
        assertEquals("07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3", first.sha256());
    }
}
