{#
    The feature marts (models/marts/) that feature_builds describes, as relations: the tests
    that span every mart take the list from here, so a new mart is added once.
#}
{% macro feature_marts() -%}
    {{- return([
        ref('events'),
        ref('sessions'),
        ref('categories'),
        ref('item_features'),
        ref('visitor_features'),
        ref('visitor_category_affinities'),
        ref('interactions'),
        ref('recommendation_outcomes'),
        ref('recommendation_metrics_daily'),
        ref('business_metrics_daily'),
        ref('experiment_results'),
        ref('interleaving_results'),
    ]) -}}
{%- endmacro %}
