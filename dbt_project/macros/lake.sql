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
        {#- one statement per query: Spark runs a hook's text as one statement -#}
        {%- do run_query(make_directory(lake_uri() ~ '/features')) -%}
        {%- do run_query(make_directory(feature_export_directory())) -%}
    {%- endif -%}
    select 1 as feature_export_prepared
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

{#- An engine without an implementation (Athena, Trino): an error when a mart would be
    exported, naming what to do; parsing and compiling work. -#}
{% macro default__export_relation_to_parquet(relation, location) -%}
    {{- exceptions.raise_compiler_error(
        "exporting " ~ relation ~ " to " ~ location ~ ": no export_relation_to_parquet for the "
        ~ adapter.type() ~ " adapter (macros/lake.sql): write an " ~ adapter.type()
        ~ "__export_relation_to_parquet (Athena: UNLOAD into an emptied prefix), or set "
        ~ "`meta: {export_to_lake: false}` on the marts"
    ) -}}
{%- endmacro %}

{#- use_tmp_file: DuckDB writes tmp_<mart>.parquet and renames it when complete, so a build
    killed mid-export leaves the previous file (or none) under the mart's name, never a
    truncated one; `recsys gc` removes a tmp_ file a killed build left. -#}
{% macro duckdb__export_relation_to_parquet(relation, location) -%}
    copy (select * from {{ relation }}) to '{{ location }}' (format parquet, compression snappy, use_tmp_file true)
{%- endmacro %}


{#- Spark writes a folder of part files (Spark's and Hive's layout, which Spark, Trino, Athena
    and pyarrow read as one table; DuckDB as <mart>.parquet/*.parquet), here one part file.
    INSERT OVERWRITE DIRECTORY replaces the folder's files when the write commits. -#}
{% macro spark__export_relation_to_parquet(relation, location) -%}
    insert overwrite directory '{{ location }}' using parquet
    select /*+ COALESCE(1) */ * from {{ relation }}
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


{#
    on-run-start: make the lake's sources readable on an engine that reads them through its
    catalog. DuckDB reads each source with the read_parquet() of its external_location and needs
    nothing. On Spark, each source table becomes an external table over its lake folder (the
    folder in the same external_location, so that the two engines cannot read different
    places), with the columns and types its YAML declares: a folder with no file yet
    (raw/impressions/ before the first batch) reads as an empty table, and files written before
    a column existed read it as null, as DuckDB's union_by_name does. Dropped and created on
    every run: the lake may have moved, and Spark caches a table's file listing.
#}
{% macro register_lake_sources() -%}
    {{- return(adapter.dispatch('register_lake_sources', 'recsys')()) -}}
{%- endmacro %}

{% macro default__register_lake_sources() -%}
    select 1 as nothing_to_do
{%- endmacro %}

{% macro spark__register_lake_sources() -%}
    {%- if execute -%}
        {%- for source in graph.sources.values() | sort(attribute='unique_id') -%}
            {%- set location = lake_folder_of_source(source) -%}
            {%- if location -%}
                {%- do run_query('create database if not exists ' ~ source.schema) -%}
                {%- do run_query('drop table if exists ' ~ source.schema ~ '.' ~ source.identifier) -%}
                {%- do run_query(
                    'create table ' ~ source.schema ~ '.' ~ source.identifier
                    ~ ' (' ~ spark_columns_of_source(source) ~ ')'
                    ~ " using parquet location '" ~ location ~ "'"
                ) -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    select 1 as nothing_to_do
{%- endmacro %}


{#
    The lake folder a source table reads, from its external_location
    (read_parquet('<folder>/*.parquet', ...), with {name} and {identifier} filled in as
    dbt-duckdb fills them); none for a source that is not in the lake (the ml tables).
#}
{% macro lake_folder_of_source(source) -%}
    {%- set location = (source.meta or {}).get('external_location')
        or (source.source_meta or {}).get('external_location') or '' -%}
    {%- if not location -%}
        {{- return('') -}}
    {%- endif -%}
    {%- set prefix, suffix = "read_parquet('", "/*.parquet'" -%}
    {%- if not location.startswith(prefix) or suffix not in location -%}
        {{- exceptions.raise_compiler_error(
            "source " ~ source.source_name ~ "." ~ source.name ~ ": its external_location should "
            ~ "read " ~ prefix ~ "<folder>" ~ suffix ~ "..., found: " ~ location
        ) -}}
    {%- endif -%}
    {%- set folder = location[prefix | length:location.index(suffix)] -%}
    {%- if "'" in folder -%}
        {{- exceptions.raise_compiler_error("source " ~ source.name ~ ": a quote in the lake path " ~ folder) -}}
    {%- endif -%}
    {{- return(folder.replace('{name}', source.name).replace('{identifier}', source.identifier)) -}}
{%- endmacro %}


{# The column list of a source as Spark DDL, from the data_type of each column in its YAML. #}
{% macro spark_columns_of_source(source) -%}
    {%- set columns = [] -%}
    {%- for column in source.columns.values() -%}
        {%- if not column.data_type -%}
            {{- exceptions.raise_compiler_error(
                "source " ~ source.source_name ~ "." ~ source.name ~ ": column " ~ column.name
                ~ " declares no data_type (Spark reads the lake with the declared types)"
            ) -}}
        {%- endif -%}
        {%- do columns.append('`' ~ column.name ~ '` ' ~ spark_type(column.data_type)) -%}
    {%- endfor -%}
    {{- return(columns | join(', ')) -}}
{%- endmacro %}


{#
    A DuckDB type as the YAML spells it, in Spark's DDL: varchar -> string, integer -> int,
    struct(a bigint, b varchar)[] -> array<struct<a: bigint, b: string>>; the others unchanged.
#}
{% macro spark_type(duckdb_type) -%}
    {%- set text = duckdb_type | trim | lower -%}
    {%- if text.endswith('[]') -%}
        {{- return('array<' ~ spark_type(text[:-2]) ~ '>') -}}
    {%- elif text.startswith('struct(') and text.endswith(')') -%}
        {%- set fields = [] -%}
        {%- for field in text[7:-1].split(',') -%}
            {%- set name, type = (field | trim).split(' ', 1) -%}
            {%- do fields.append(name ~ ': ' ~ spark_type(type)) -%}
        {%- endfor -%}
        {{- return('struct<' ~ fields | join(', ') ~ '>') -}}
    {%- endif -%}
    {{- return({'varchar': 'string', 'text': 'string', 'integer': 'int', 'int4': 'int', 'int8': 'bigint', 'float8': 'double'}.get(text, text)) -}}
{%- endmacro %}
