{# Every row satisfies a boolean SQL expression over its columns (fails on false or null). #}
{% test expression_is_true(model, expression) %}

select *
from {{ model }}
where not coalesce({{ expression }}, false)

{% endtest %}
