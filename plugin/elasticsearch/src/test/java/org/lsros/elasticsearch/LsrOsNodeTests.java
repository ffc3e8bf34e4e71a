/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.elasticsearch;

import java.util.Collection;
import java.util.List;

import org.elasticsearch.index.query.QueryBuilders;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.search.SearchHit;
import org.elasticsearch.test.ESSingleNodeTestCase;
import org.elasticsearch.xcontent.XContentType;
import org.lsros.lucene.IndexFixture;

import static org.elasticsearch.test.hamcrest.ElasticsearchAssertions.assertResponse;

/**
 * An index with lsr-os's text field on a node with only this plugin (no analysis-common): the
 * similarity passes Elasticsearch's checks at index creation, and a match scores the dot product.
 */
public class LsrOsNodeTests extends ESSingleNodeTestCase {

    @Override
    protected Collection<Class<? extends Plugin>> getPlugins() {
        return List.of(LsrOsPlugin.class);
    }

    public void testAMatchOnTheFoldedFieldScoresTheDotProduct() {
        indicesAdmin().prepareCreate("images").setSettings(IndexFixture.settings("65536"), XContentType.JSON).setMapping(IndexFixture.MAPPING).get();
        prepareIndex("images").setId("a").setSource("text", IndexFixture.DOC_A).get();
        prepareIndex("images").setId("b").setSource("text", IndexFixture.DOC_B).get();
        indicesAdmin().prepareRefresh("images").get();

        // "star" typed twice counts once: 98304/65536 + 131072/65536 for a, 32768/65536 for b
        assertResponse(client().prepareSearch("images").setQuery(QueryBuilders.matchQuery("text", "Blue star STAR")), response -> {
            SearchHit[] hits = response.getHits().getHits();
            assertEquals(2, hits.length);
            assertEquals("a", hits[0].getId());
            assertEquals(3.5f, hits[0].getScore(), 1e-6f);
            assertEquals("b", hits[1].getId());
            assertEquals(0.5f, hits[1].getScore(), 1e-6f);
        });
    }

    public void testAScaleThatIsNotPositiveFailsTheIndexCreation() {
        IllegalArgumentException e = expectThrows(IllegalArgumentException.class,
            () -> indicesAdmin().prepareCreate("bad").setSettings(IndexFixture.settings("0"), XContentType.JSON).setMapping(IndexFixture.MAPPING).get());
        assertTrue(e.getMessage(), e.getMessage().contains("scale must be a finite number > 0"));
    }
}
