/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.opensearch;

import java.io.IOException;
import java.util.Map;

import org.apache.lucene.document.Document;
import org.apache.lucene.document.Field;
import org.apache.lucene.document.FieldType;
import org.apache.lucene.index.DirectoryReader;
import org.apache.lucene.index.IndexOptions;
import org.apache.lucene.index.IndexWriter;
import org.apache.lucene.index.IndexWriterConfig;
import org.apache.lucene.index.Term;
import org.apache.lucene.search.BooleanClause;
import org.apache.lucene.search.BooleanQuery;
import org.apache.lucene.search.Explanation;
import org.apache.lucene.search.IndexSearcher;
import org.apache.lucene.search.TermQuery;
import org.apache.lucene.search.TopDocs;
import org.apache.lucene.search.TopScoreDocCollectorManager;
import org.apache.lucene.search.TotalHits;
import org.apache.lucene.search.similarities.Similarity.SimScorer;
import org.apache.lucene.store.Directory;
import org.opensearch.Version;
import org.opensearch.cluster.metadata.IndexMetadata;
import org.opensearch.common.settings.Settings;
import org.opensearch.index.IndexSettings;
import org.opensearch.index.similarity.SimilarityService;
import org.opensearch.test.IndexSettingsModule;
import org.opensearch.test.OpenSearchTestCase;

/** The lsr_os_dot similarity: its formula, OpenSearch's checks, and Lucene's skipping on top of it. */
public class DotSimilarityTests extends OpenSearchTestCase {

    public void testScoreIsBoostTimesFreqOverScale() {
        SimScorer scorer = new DotSimilarity(65536f).scorer(2f, null);
        assertEquals(2f * 250 / 65536, scorer.score(250, 1), 0f);
        assertEquals(0f, scorer.score(0, 1), 0f);
        Explanation explained = scorer.explain(Explanation.match(250f, "freq"), 1);
        assertEquals(scorer.score(250, 1), explained.getValue().floatValue(), 0f);
        assertTrue(explained.getDescription(), explained.getDescription().contains("boost * freq / scale"));
    }

    public void testTheMaximumScoreIsFiniteSoBlockMaxSkippingWorks() {
        SimScorer scorer = new DotSimilarity(65536f).scorer(1e6f, null);
        float max = scorer.score(Float.MAX_VALUE, 1);
        assertTrue(Float.isFinite(max));
        assertEquals(scorer.score(Integer.MAX_VALUE, 1), max, 0f);
        for (float freq = 1; freq < 1e9f; freq *= 3.7f) { // non-decreasing in freq, and norms play no part
            assertTrue(scorer.score(freq * 3.7f, 1) >= scorer.score(freq, 1));
            assertEquals(scorer.score(freq, 1), scorer.score(freq, 255), 0f);
        }
    }

    public void testScaleAndSettingsAreChecked() {
        assertEquals(65536f, DotSimilarity.fromSettings(Settings.builder().put("type", "lsr_os_dot").build()).scale(), 0f);
        assertEquals(100f, DotSimilarity.fromSettings(Settings.builder().put("scale", 100).build()).scale(), 0f);
        for (String bad : new String[] { "0", "-1", "NaN", "Infinity" }) {
            IllegalArgumentException e = expectThrows(IllegalArgumentException.class,
                () -> DotSimilarity.fromSettings(Settings.builder().put("scale", bad).build()));
            assertTrue(e.getMessage(), e.getMessage().contains("scale must be a finite number > 0"));
        }
        IllegalArgumentException typo = expectThrows(IllegalArgumentException.class,
            () -> DotSimilarity.fromSettings(Settings.builder().put("scal", 10).build()));
        assertTrue(typo.getMessage(), typo.getMessage().contains("unknown settings [scal]"));
    }

    public void testOpenSearchAcceptsItAsACustomSimilarity() {
        Settings settings = Settings.builder()
            .put(IndexMetadata.SETTING_VERSION_CREATED, Version.CURRENT)
            .put("index.similarity.lsr_os_dot.type", DotSimilarity.NAME)
            .put("index.similarity.lsr_os_dot.scale", 65536)
            .build();
        IndexSettings indexSettings = IndexSettingsModule.newIndexSettings("test", settings);
        // the constructor validates: scores non-negative, non-decreasing in freq, non-increasing in norm
        SimilarityService service = new SimilarityService(indexSettings, null,
            Map.of(DotSimilarity.NAME, (s, version, scripts) -> DotSimilarity.fromSettings(s)));
        assertNotNull(service.getSimilarity(DotSimilarity.NAME));
    }

    /** Lucene's top-k search skips documents that cannot compete: it visits fewer than match. */
    public void testTopScoresSkipNonCompetitiveDocuments() throws IOException {
        FieldType type = new FieldType();
        type.setIndexOptions(IndexOptions.DOCS_AND_FREQS);
        type.setOmitNorms(true);
        type.setTokenized(true);
        type.freeze();
        try (Directory dir = newDirectory()) {
            IndexWriterConfig config = new IndexWriterConfig().setSimilarity(new DotSimilarity(65536f));
            try (IndexWriter writer = new IndexWriter(dir, config)) {
                for (int i = 0; i < 20000; i++) {
                    Document doc = new Document();
                    // common terms with small weights; a rare one with large weights
                    doc.add(new Field("text", new FreqTokenStream("red", 1 + i % 1000, "ball", 1 + (i * 7) % 1000,
                        i % 100 == 0 ? "dog" : null, 100000 + i), type));
                    writer.addDocument(doc);
                }
                writer.forceMerge(1);
            }
            try (DirectoryReader reader = DirectoryReader.open(dir)) {
                IndexSearcher searcher = new IndexSearcher(reader);
                searcher.setSimilarity(new DotSimilarity(65536f));
                BooleanQuery query = new BooleanQuery.Builder()
                    .add(new TermQuery(new Term("text", "dog")), BooleanClause.Occur.SHOULD)
                    .add(new TermQuery(new Term("text", "red")), BooleanClause.Occur.SHOULD)
                    .add(new TermQuery(new Term("text", "ball")), BooleanClause.Occur.SHOULD)
                    .build();
                TopDocs all = searcher.search(query, new TopScoreDocCollectorManager(10, Integer.MAX_VALUE));
                TopDocs top = searcher.search(query, new TopScoreDocCollectorManager(10, 10));
                assertEquals(new TotalHits(20000, TotalHits.Relation.EQUAL_TO), all.totalHits);
                assertEquals(TotalHits.Relation.GREATER_THAN_OR_EQUAL_TO, top.totalHits.relation());
                assertTrue("visited " + top.totalHits.value(), top.totalHits.value() < 20000 / 2);
                for (int i = 0; i < 10; i++) {
                    assertEquals(all.scoreDocs[i].doc, top.scoreDocs[i].doc);
                    assertEquals(all.scoreDocs[i].score, top.scoreDocs[i].score, 0f);
                }
            }
        }
    }
}
