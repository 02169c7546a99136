{#
    The ML step writes its outputs back to the warehouse (schema `ml`), declared as the `ml`
    source. Before the first training they do not exist yet: their staging models (stg_ml__*)
    then build empty (with the same columns), so that `dbt build` always works on its own.
#}
{% macro ml_table_ready(identifier) -%}
    {#- At parse time say yes, so that source('ml', ...) is called and lineage is recorded. -#}
    {%- if not execute -%}
        {{- return(true) -}}
    {%- endif -%}
    {%- set relation = adapter.get_relation(
        database=target.database, schema='ml', identifier=identifier
    ) -%}
    {%- if relation is none -%}
        {{- return(false) -}}
    {%- endif -%}
    {#- a table from an older release, without the feature version, cannot be trusted -#}
    {%- set columns = adapter.get_columns_in_relation(relation) | map(attribute='name') | list -%}
    {{- return('feature_version' in columns) -}}
{%- endmacro %}


{# The label window's end (var label_end_at) as a SQL timestamp literal, or none when unset. #}
{% macro label_end_at() -%}
    {%- set configured = var('label_end_at', none) -%}
    {%- if configured is none or (configured | string | trim) == '' -%}
        {{- return(none) -}}
    {%- endif -%}
    {%- set parsed = parse_utc_datetime(configured | string | trim) -%}
    {{- return("cast('" ~ parsed.strftime('%Y-%m-%d %H:%M:%S') ~ "' as timestamp)") -}}
{%- endmacro %}
