{#
    Where the lake is and how marts are exported to it.

    The lake root comes from the environment, like every other setting of the pipeline:
    RECSYS_LAKE_URI, else $RECSYS_DATA_DIR/lake, else ../data/lake (the repository's ./data when
    dbt runs from dbt_project/). The rule is written once, in the retailrocket source's
    external_location (models/staging/_retailrocket__sources.yml, where macros cannot be
    called); lake_uri() reads the root back from it, so the two cannot disagree.
#}

{% macro lake_uri() -%}
    {%- set prefix, suffix = "read_parquet('", "/raw/{name}/*.parquet', union_by_name = true)" -%}
    {%- set source = graph.sources.get('source.recsys.retailrocket.events') -%}
    {%- set location = (source.source_meta or {}).get('external_location', '') if source else '' -%}
    {%- if not (location.startswith(prefix) and location.endswith(suffix)) -%}
        {{- exceptions.raise_compiler_error(
            "lake_uri(): the retailrocket source's external_location should read "
            ~ prefix ~ "<lake root>" ~ suffix ~ ", found: " ~ location
        ) -}}
    {%- endif -%}
    {{- return(location[prefix | length:(location | length) - (suffix | length)]) -}}
{%- endmacro %}


{#
    Whether the lake holds any Parquet file of raw table `name` (raw/<name>/*.parquet), asked
    when the model runs. read_parquet fails on a glob that matches nothing, so a model over a
    table that may not exist yet (raw/impressions/ before the API's first ingested batch)
    renders an empty branch instead. DuckDB's glob() lists through the same filesystems as
    read_parquet, so an s3:// lake is listed through the profile's fsspec filesystem.
    At parse time it says yes, so that the model's source() is called and lineage recorded.
#}
{% macro lake_table_has_files(name) -%}
    {%- if not execute -%}
        {{- return(true) -}}
    {%- endif -%}
    {{- return(adapter.dispatch('lake_table_has_files', 'recsys')(name)) -}}
{%- endmacro %}

{#- Other engines read the table through their catalog: taken as present. -#}
{% macro default__lake_table_has_files(name) -%}
    {{- return(true) -}}
{%- endmacro %}

{% macro duckdb__lake_table_has_files(name) -%}
    {%- set pattern = lake_uri() ~ '/raw/' ~ name ~ '/*.parquet' -%}
    {%- set found = run_query("select count(*) from glob('" ~ pattern ~ "')") -%}
    {{- return(found.columns[0].values()[0] > 0) -}}
{%- endmacro %}


{#
    The column names of a relation (a source read from the lake included), asked when the model
    runs: a zero-row select, which reads Parquet footers only. At parse time: none.
#}
{% macro relation_column_names(relation) -%}
    {%- if not execute -%}
        {{- return([]) -}}
    {%- endif -%}
    {%- set found = run_query('select * from ' ~ relation ~ ' where 1 = 0') -%}
    {{- return(found.column_names | map('lower') | list) -}}
{%- endmacro %}


{% macro feature_export_directory() -%}
    {{- return(lake_uri() ~ '/features/' ~ feature_version()) -}}
{%- endmacro %}


{#
    on-run-start hook: create <lake>/features/<feature_version>/ before the marts' post-hooks
    write into it (once, so two threads never race to create it). Only `run` and `build` write.
#}
{% macro prepare_feature_export() -%}
    {%- if execute and invocation_args_dict.get('which') in ('run', 'build') -%}
        {{- make_directory(lake_uri() ~ '/features') -}};
        {{- make_directory(feature_export_directory()) -}}
    {%- endif -%}
{%- endmacro %}


{#
    Post-hook of every mart: write the freshly built table to
    <lake>/features/<feature_version>/<mart>.parquet (overwritten when rebuilt). A model opts out
    with `config: {meta: {export_to_lake: false}}`.
#}
{% macro export_to_lake() -%}
    {%- if execute and (config.get('meta') or {}).get('export_to_lake', true) -%}
        {{- export_relation_to_parquet(this, feature_export_directory() ~ '/' ~ this.identifier ~ '.parquet') -}}
    {%- endif -%}
{%- endmacro %}


{% macro export_relation_to_parquet(relation, location) -%}
    {{- return(adapter.dispatch('export_relation_to_parquet', 'recsys')(relation, location)) -}}
{%- endmacro %}

{#- use_tmp_file: DuckDB writes tmp_<mart>.parquet and renames it when complete, so a build
    killed mid-export leaves the previous file (or none) under the mart's name, never a
    truncated one; `recsys gc` removes a tmp_ file a killed build left. -#}
{% macro duckdb__export_relation_to_parquet(relation, location) -%}
    copy (select * from {{ relation }}) to '{{ location }}' (format parquet, compression snappy, use_tmp_file true)
{%- endmacro %}


{#
    Create one directory level (its parent must exist). Object stores have no directories, so
    this does nothing for a URI with a scheme (s3://...).
#}
{% macro make_directory(path) -%}
    {{- return(adapter.dispatch('make_directory', 'recsys')(path)) -}}
{%- endmacro %}

{% macro default__make_directory(path) -%}
    select 1 as nothing_to_do
{%- endmacro %}

{% macro duckdb__make_directory(path) -%}
    {%- if '://' in path -%}
        select 1 as nothing_to_do
    {%- else -%}
        {#- DuckDB has no mkdir: a partitioned COPY of zero rows creates its target directory and
            writes no file; overwrite_or_ignore makes it a no-op when the directory exists. -#}
        copy (select 1 as _partition, 1 as _column where false) to '{{ path }}' (format parquet, partition_by (_partition), overwrite_or_ignore true)
    {%- endif -%}
{%- endmacro %}
