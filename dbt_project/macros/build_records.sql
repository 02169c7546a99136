{#
    Which build each table model comes from, so that a build stopped part-way (killed, or failed
    on a test) cannot pass for a whole one.

    `main.model_builds` holds one row per mart and ranking model: the feature version it was last
    built as of, by which dbt invocation, when. The row is written by the model's post-hook inside
    the transaction that swaps the table in, so the table and its row change together, even
    under kill -9. A warehouse whose marts name more than one feature version (or another one
    than feature_builds) is mixed: `recsys.warehouse.check_one_build` refuses to read it, and the
    test assert_marts_from_one_build fails on it.
#}

{% macro create_model_builds() -%}
    {%- if execute and invocation_args_dict.get('which') in ('run', 'build') -%}
        create table if not exists {{ target.schema }}.model_builds (
            model string not null,
            layer string not null,
            feature_version string not null,
            invocation_id string not null,
            built_at timestamp not null
        )
    {%- else -%}
        select 1 as nothing_to_do
    {%- endif -%}
{%- endmacro %}


{#- Post-hook of every mart and ranking model (dbt_project.yml). -#}
{% macro record_model_build() -%}
    {%- if execute -%}
        {{- adapter.dispatch('record_model_build', 'recsys')() -}}
    {%- endif -%}
{%- endmacro %}

{#- Engines whose tables take no DELETE (Spark's Parquet tables): one row per build appended,
    the latest per model is the record. -#}
{% macro default__record_model_build() -%}
    insert into {{ target.schema }}.model_builds values (
        '{{ this.identifier }}',
        '{{ model.fqn[1] if model.fqn | length > 2 else "" }}',
        '{{ feature_version() }}',
        '{{ invocation_id }}',
        current_timestamp
    )
{%- endmacro %}

{% macro duckdb__record_model_build() -%}
        delete from {{ target.schema }}.model_builds where model = '{{ this.identifier }}';
        insert into {{ target.schema }}.model_builds values (
            '{{ this.identifier }}',
            '{{ model.fqn[1] if model.fqn | length > 2 else "" }}',
            '{{ feature_version() }}',
            '{{ invocation_id }}',
            cast(now() as timestamp)
        )
{%- endmacro %}
