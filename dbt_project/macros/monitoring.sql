{#
    Helpers of the monitoring models (models/monitoring/): the lake's monitoring/ exports, and
    the discounts of the ranking metrics computed in SQL.
#}


{#
    Whether the lake holds any Parquet file of monitoring table `name`
    (<lake>/monitoring/<name>/*.parquet, e.g. monitoring/published/ before `recsys monitor`'s
    first export), asked when the model runs; the monitoring counterpart of
    lake_table_has_files() (macros/lake.sql), for the same reason: read_parquet fails on a glob
    that matches nothing, so the staging model renders an empty branch instead.
    It also checks that the monitoring source (models/staging/_monitoring__sources.yml, which
    has to write the lake-root rule again) still reads the root lake_uri() names.
    At parse time it says yes, so that the model's source() is called and lineage recorded.
#}
{% macro monitoring_table_has_files(name) -%}
    {%- if not execute -%}
        {{- return(true) -}}
    {%- endif -%}
    {%- set prefix = "read_parquet('" ~ lake_uri() ~ "/monitoring/" -%}
    {%- for source in graph.sources.values()
        if source.source_name == 'monitoring' and source.package_name == 'recsys' -%}
        {%- set location = (source.source_meta or {}).get('external_location', '') -%}
        {%- if not location.startswith(prefix) -%}
            {{- exceptions.raise_compiler_error(
                "monitoring_table_has_files(): the monitoring source's external_location should "
                ~ "start with " ~ prefix ~ " (the retailrocket source's lake root), found: "
                ~ location
            ) -}}
        {%- endif -%}
    {%- endfor -%}
    {{- return(adapter.dispatch('monitoring_table_has_files', 'recsys')(name)) -}}
{%- endmacro %}

{#- Other engines read the table through their catalog: taken as present. -#}
{% macro default__monitoring_table_has_files(name) -%}
    {{- return(true) -}}
{%- endmacro %}

{% macro duckdb__monitoring_table_has_files(name) -%}
    {%- set pattern = lake_uri() ~ '/monitoring/' ~ name ~ '/*.parquet' -%}
    {%- set found = run_query("select count(*) from glob('" ~ pattern ~ "')") -%}
    {{- return(found.columns[0].values()[0] > 0) -}}
{%- endmacro %}


{#
    The DCG discount of a hit at `rank` (1 = best): 1 / log2(rank + 1), as
    models_ml/metrics.py's ndcg_at_k has it (1 / log2(position + 2), positions from 0).
    ln() is spelled alike by DuckDB, Spark and Trino.
#}
{% macro dcg_discount(rank) -%}
    (ln(2) / ln({{ rank }} + 1))
{%- endmacro %}


{#
    DCG of an ideal list for a visitor with `n_relevant` relevant items, at k: the discounts of
    ranks 1 .. min(n_relevant, k), binary gains (the denominator of NDCG@k in
    models_ml/metrics.py). One term per rank up to k, each counted while n_relevant reaches it.
#}
{% macro ideal_dcg(n_relevant, k) -%}
    (
    {%- for rank in range(1, k + 1) %}
        {% if not loop.first %}+ {% endif -%}
        case when {{ n_relevant }} >= {{ rank }} then {{ dcg_discount(rank) }} else 0 end
    {%- endfor %}
    )
{%- endmacro %}
