/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.opensearch;

import java.util.Collection;
import java.util.List;

import org.lsros.lucene.IndexFixture;
import org.opensearch.core.xcontent.MediaTypeRegistry;
import org.opensearch.index.query.QueryBuilders;
import org.opensearch.plugins.Plugin;
import org.opensearch.search.SearchHit;
import org.opensearch.test.OpenSearchSingleNodeTestCase;

/**
 * An index with lsr-os's text field on a node with only this plugin (no analysis-common): the
 * similarity passes OpenSearch's checks at index creation, and a match scores the dot product.
 */
public class LsrOsNodeTests extends OpenSearchSingleNodeTestCase {

    @Override
    protected Collection<Class<? extends Plugin>> getPlugins() {
        return List.of(LsrOsPlugin.class);
    }

    public void testAMatchOnTheFoldedFieldScoresTheDotProduct() {
        client().admin().indices().prepareCreate("images").setSettings(IndexFixture.settings("65536"), MediaTypeRegistry.JSON)
            .setMapping(IndexFixture.MAPPING).get();
        client().prepareIndex("images").setId("a").setSource("text", IndexFixture.DOC_A).get();
        client().prepareIndex("images").setId("b").setSource("text", IndexFixture.DOC_B).get();
        client().admin().indices().prepareRefresh("images").get();

        // "star" typed twice counts once: 98304/65536 + 131072/65536 for a, 32768/65536 for b
        SearchHit[] hits = client().prepareSearch("images").setQuery(QueryBuilders.matchQuery("text", "Blue star STAR")).get()
            .getHits().getHits();
        assertEquals(2, hits.length);
        assertEquals("a", hits[0].getId());
        assertEquals(3.5f, hits[0].getScore(), 1e-6f);
        assertEquals("b", hits[1].getId());
        assertEquals(0.5f, hits[1].getScore(), 1e-6f);
    }

    public void testAScaleThatIsNotPositiveFailsTheIndexCreation() {
        IllegalArgumentException e = expectThrows(IllegalArgumentException.class,
            () -> client().admin().indices().prepareCreate("bad").setSettings(IndexFixture.settings("0"), MediaTypeRegistry.JSON)
                .setMapping(IndexFixture.MAPPING).get());
        assertTrue(e.getMessage(), e.getMessage().contains("scale must be a finite number > 0"));
    }
}
