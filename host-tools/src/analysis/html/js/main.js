// main.js — the prompt and head selectors, the URL fragment (#prompt=2&head=1.3&hover=7
// &mode=dla), and the page's self-checks (data-rendered, data-overflow).
function drawPromptScores(){
  const p=D.prompts[S.prompt],box=$('prompt-scores');box.innerHTML='';
  gridTable(box,'p-scores-prev','previous token',p.prev);gridTable(box,'p-scores-dup','duplicate token',p.dup);gridTable(box,'p-scores-ind','induction',p.ind);
}
function selectHead(l,h){
  S.head=[l,h];$('head-select').value=l+'.'+h;
  drawMain();drawCircuits();colourTokens();drawDla();
}
function selectPrompt(i){
  S.prompt=i;S.hover=-1;$('prompt-select').value=i;
  const p=D.prompts[i];$('prompt-info').textContent=p.tokens.length+' tokens';
  drawTokens();drawThumbs();drawMain();drawPromptScores();drawDla();drawPaths();
}
function overflowing(){
  const bad=[];
  document.querySelectorAll('section').forEach(s=>{
    const r=s.getBoundingClientRect();
    if(s.scrollWidth>s.clientWidth+1){bad.push(s.id);return;}
    for(const e of s.querySelectorAll('canvas,table,h3,p,.thumb,.small')){if(e.closest('.scroll'))continue;const b=e.getBoundingClientRect();if(b.right>r.right+1){bad.push(s.id+':'+(e.id||e.tagName.toLowerCase()));break;}}
  });
  document.querySelectorAll('.tv').forEach(t=>{if(t.scrollWidth>t.clientWidth+1)bad.push('tokens:tv');});
  if(document.documentElement.scrollWidth>window.innerWidth+1)bad.push('page');
  return bad;
}
(function init(){
  const ps=$('prompt-select');D.prompts.forEach((p,i)=>el('option',{value:i},ps,p.name));
  ps.addEventListener('change',()=>selectPrompt(+ps.value));
  const hs=$('head-select');for(let l=0;l<L;l++)for(let h=0;h<H;h++)el('option',{value:l+'.'+h},hs,headName(l,h));
  hs.addEventListener('change',()=>{const [l,h]=hs.value.split('.').map(Number);selectHead(l,h);});
  // Open the head with the highest induction score on the first prompt.
  let best=-1;const p0=D.prompts[0];
  for(let l=0;l<L;l++)for(let h=0;h<H;h++)if(p0.ind[l][h]>best){best=p0.ind[l][h];S.head=[l,h];}
  const f={};location.hash.replace(/^#/,'').split('&').forEach(kv=>{const [k,v]=kv.split('=');if(k)f[k]=v;});
  if(f.head){const [l,h]=f.head.split('.').map(Number);if(l<L&&h<H)S.head=[l,h];}
  if(f.mode==='dla'){S.mode='dla';document.querySelector('input[name=tv-mode][value=dla]').checked=true;}
  hs.value=S.head.join('.');
  drawEigen();drawComposition();drawCircuits();
  selectPrompt(f.prompt&&+f.prompt<D.prompts.length?+f.prompt:0);
  if(f.hover!==undefined){const sp=$('tv').children[+f.hover];if(sp){sp.scrollIntoView({block:'center'});sp.dispatchEvent(new MouseEvent('mouseover',{bubbles:true,clientX:10,clientY:10}));}}
  document.body.dataset.overflow=overflowing().join(' ');
  document.body.dataset.figures=document.querySelectorAll('canvas.figure').length;
  document.body.dataset.height=document.documentElement.scrollHeight;
  document.body.setAttribute('data-rendered','1');
})();
