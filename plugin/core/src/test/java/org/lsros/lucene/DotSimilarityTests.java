/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.lucene;

import java.io.IOException;
import java.util.Map;
import java.util.Set;

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
import org.apache.lucene.tests.util.LuceneTestCase;

/** The lsr_os_dot similarity: its formula, its bounds, its settings, and Lucene's skipping on top of it. */
public class DotSimilarityTests extends LuceneTestCase {

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

    private static DotSimilarity fromSettings(Map<String, String> settings) {
        return DotSimilarity.fromSettings(settings.keySet(), settings::get);
    }

    public void testScaleAndSettingsAreChecked() {
        assertEquals(65536f, fromSettings(Map.of("type", "lsr_os_dot")).scale(), 0f);
        assertEquals(100f, fromSettings(Map.of("scale", "100")).scale(), 0f);
        assertEquals(0.5f, fromSettings(Map.of("scale", " 0.5")).scale(), 0f);
        for (String bad : new String[] { "0", "-1", "NaN", "Infinity", "ten" }) {
            IllegalArgumentException e = expectThrows(IllegalArgumentException.class, () -> fromSettings(Map.of("scale", bad)));
            assertTrue(e.getMessage(), e.getMessage().contains("scale must be a finite number > 0"));
        }
        IllegalArgumentException typo = expectThrows(IllegalArgumentException.class,
            () -> DotSimilarity.fromSettings(Set.of("scal", "type"), key -> "10"));
        assertTrue(typo.getMessage(), typo.getMessage().contains("unknown settings [scal]"));
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
