{#
    Each layer in a schema of its own (dbt_project.yml: +schema), named as the layer: `staging`
    and `intermediate` beside the marts in the target's schema (`main`), where the pipeline, the
    publisher and an analyst read them. dbt's default would prefix the target's schema
    (`main_staging`).
#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}


{#
    on-run-start: before the layers had schemas of their own, staging and intermediate relations
    lived in `main` beside the marts. A warehouse built then still holds them there, stale, under
    the names an analyst would type first: drop them once (run and build only).
#}
{% macro drop_relations_of_the_single_schema_layout() -%}
    {{- return(adapter.dispatch('drop_relations_of_the_single_schema_layout', 'recsys')()) -}}
{%- endmacro %}

{#- That layout only ever existed in DuckDB warehouses. -#}
{% macro default__drop_relations_of_the_single_schema_layout() -%}
    select 1 as nothing_left_to_do
{%- endmacro %}

{% macro duckdb__drop_relations_of_the_single_schema_layout() -%}
    {%- if execute and invocation_args_dict.get('which') in ('run', 'build') -%}
        {%- set found = run_query(
            "select table_name, table_type from information_schema.tables"
            ~ " where table_catalog = current_database() and table_schema = '" ~ target.schema ~ "'"
            ~ " and (starts_with(table_name, 'stg_') or starts_with(table_name, 'int_'))"
        ) -%}
        {%- for row in found.rows -%}
            {%- set kind = 'view' if row[1] == 'VIEW' else 'table' -%}
            {%- do run_query('drop ' ~ kind ~ ' if exists ' ~ target.schema ~ '."' ~ row[0] ~ '"') -%}
        {%- endfor -%}
    {%- endif -%}
    select 1 as nothing_left_to_do
{%- endmacro %}
