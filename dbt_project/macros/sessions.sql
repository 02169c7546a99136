{# The session key, '<visitor_id>-<session_number>' (e.g. '42-3'), built in one place. #}
{% macro build_session_id(visitor_id, session_number) -%}
    {{ dbt.concat([
        "cast(" ~ visitor_id ~ " as varchar)",
        "'-'",
        "cast(" ~ session_number ~ " as varchar)",
    ]) }}
{%- endmacro %}
