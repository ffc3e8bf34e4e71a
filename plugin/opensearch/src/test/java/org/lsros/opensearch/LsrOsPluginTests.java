/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.opensearch;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;

import org.apache.lucene.analysis.Analyzer;
import org.apache.lucene.analysis.TokenStream;
import org.apache.lucene.analysis.tokenattributes.TermFrequencyAttribute;
import org.lsros.lucene.IndexFixture;
import org.opensearch.core.xcontent.MediaTypeRegistry;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.index.analysis.AnalysisTestsHelper;
import org.opensearch.test.OpenSearchTestCase;
import org.opensearch.test.OpenSearchTokenStreamTestCase;

/** The plugin's analysis registrations, through OpenSearch's analysis module as an index builds them. */
public class LsrOsPluginTests extends OpenSearchTokenStreamTestCase {

    private Path home;

    @Override
    public void setUp() throws Exception {
        super.setUp();
        home = createTempDir();
        Files.createDirectories(home.resolve("config").resolve("vocab"));
        Files.writeString(home.resolve("config").resolve("vocab").resolve("small.txt"), "[UNK]\nun\n##want\n##ed\n");
    }

    /** The analysis of lsr-os's index settings (IndexFixture), plus {@code extra} (keys under index.analysis.). */
    private OpenSearchTestCase.TestAnalysis analysis(String... extra) throws IOException {
        Settings.Builder settings = Settings.builder()
            .loadFromSource(IndexFixture.settings("65536"), MediaTypeRegistry.JSON)
            .put(Environment.PATH_HOME_SETTING.getKey(), home.toString());
        for (int i = 0; i < extra.length; i += 2) {
            settings.put("index.analysis." + extra[i], extra[i + 1]);
        }
        return AnalysisTestsHelper.createTestAnalysisFromSettings(settings.build(), new LsrOsPlugin());
    }

    public void testTheQueryAnalyzerSplitsTypedTextIntoDistinctWordPieces() throws IOException {
        Analyzer query = analysis().indexAnalyzers.get("lsr_os_query");
        assertAnalyzesTo(query, "Two dogs, naïve puppies 😀! Two", new String[] { "two", "dogs", ",", "naive", "pup", "##pies", "[UNK]", "!" },
            new int[] { 0, 4, 8, 10, 16, 19, 24, 26 }, new int[] { 3, 8, 9, 15, 19, 23, 26, 27 });
        checkRandomData(random(), query, 100);
    }

    public void testTheFoldedAnalyzerGivesEachTermItsFrequency() throws IOException {
        Analyzer folded = analysis().indexAnalyzers.get("lsr_os_folded");
        try (TokenStream stream = folded.tokenStream("text", IndexFixture.DOC_A)) {
            TermFrequencyAttribute freq = stream.addAttribute(TermFrequencyAttribute.class);
            stream.reset();
            assertTrue(stream.incrementToken());
            assertEquals(98304, freq.getTermFrequency());
            assertTrue(stream.incrementToken());
            assertEquals(131072, freq.getTermFrequency());
            assertFalse(stream.incrementToken());
            stream.end();
        }
        IllegalArgumentException bad = expectThrows(IllegalArgumentException.class,
            () -> analysis("analyzer.lsr_os_folded.delimiter", "||"));
        assertTrue(bad.getMessage(), bad.getMessage().contains("delimiter must be one character"));
    }

    public void testVocabPathAndVocabSha256() throws IOException {
        Analyzer small = analysis("tokenizer.small.type", "lsr_os_wordpiece", "tokenizer.small.vocab_path", "vocab/small.txt",
            "analyzer.small.type", "custom", "analyzer.small.tokenizer", "small").indexAnalyzers.get("small");
        assertAnalyzesTo(small, "unwanted wanted", new String[] { "un", "##want", "##ed", "[UNK]" });
        IllegalArgumentException wrong = expectThrows(IllegalArgumentException.class,
            () -> analysis("tokenizer.lsr_os_query_pieces.vocab_sha256", "0".repeat(64)));
        assertTrue(wrong.getMessage(), wrong.getMessage().contains("vocab_sha256 [" + "0".repeat(64) + "] does not match"));
        IllegalArgumentException outside = expectThrows(IllegalArgumentException.class,
            () -> analysis("tokenizer.lsr_os_query_pieces.vocab_path", "../outside.txt"));
        assertTrue(outside.getMessage(), outside.getMessage().contains("must name a file inside the config folder"));
    }
}
