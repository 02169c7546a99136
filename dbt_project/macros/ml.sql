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


{#
    The body of an ml staging model: the ML step's table when it is there (ml_table_ready), else
    no rows with the columns and types that the `ml` source declares (its YAML, the one place
    they are written), so that the staging model's contract holds either way.
#}
{% macro ml_source(identifier) -%}
    {%- if ml_table_ready(identifier) -%}
        select * from {{ source('ml', identifier) }}
    {%- else -%}
        {%- set declared = graph.sources.get('source.' ~ project_name ~ '.ml.' ~ identifier) -%}
        {%- if declared is none or not declared.columns -%}
            {{- exceptions.raise_compiler_error(
                "ml_source(): the ml source declares no columns for " ~ identifier
            ) -}}
        {%- endif %}
        select
        {%- for column in declared.columns.values() %}
            cast(null as {{ column.data_type }}) as {{ adapter.quote(column.name) }}
            {{- "," if not loop.last }}
        {%- endfor %}
        where false
    {%- endif -%}
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
